"""The ``s2ap`` command line: run one pipeline, launch/resume/submit/inspect a study, masks, UI.

    s2ap run RUN.yaml --out DIR                      one pipeline, no Ray (tune.run)
    s2ap tune STUDY.yaml [--resume|--overwrite] [--address auto|HOST:PORT] [--tracking-uri URI]
    s2ap submit STUDY.yaml --address http://HEAD:8265 [--wait]
    s2ap status STUDY.yaml [--json]
    s2ap evaluate STUDY.yaml [--trial ID]            test-set numbers of a trial's checkpoint
    s2ap masks pull STUDY.yaml [--metric M --mode max|min --out DIR --with-weights]
    s2ap masks apply MASK.s2mask --checkpoint DENSE.pt --out PRUNED.pt [--force]
    s2ap masks diff A.s2mask B.s2mask [--json]
    s2ap report STUDY.yaml... [--out RESULTS.md]     a page testing the paper's claims
    s2ap ui STUDY.yaml [--port N]                    MLflow UI for the study's store

Every user error prints one message to stderr and exits with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the input is wrong' rather than 'the program is wrong'."""
    from s2ap.config import ConfigError

    errors: list[type[BaseException]] = [UserError, ConfigError]
    try:
        from tune.report import ReportError

        errors.append(ReportError)
    except ImportError:
        pass
    try:
        from tracking.artifacts import MaskFileError
        from tracking.pull import NoFinishedTrialError, StudyNotFoundError
        from tracking.runs import ParamConflictError, TrackingUnavailableError

        errors += [
            MaskFileError,
            NoFinishedTrialError,
            StudyNotFoundError,
            TrackingUnavailableError,
            ParamConflictError,
        ]
    except ImportError:  # tracking still being written: its errors surface as tracebacks
        pass
    return tuple(errors)


# --------------------------------------------------------------------------------------------
# helpers


def _parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set prune.epochs=3`` -> ``{"prune.epochs": 3}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set prune.epochs=3")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(args: argparse.Namespace) -> Any:
    from tune.study import load_study

    overrides = _parse_set(getattr(args, "set", None))
    if getattr(args, "storage_root", None):
        overrides["study.storage_root"] = str(Path(args.storage_root).expanduser().absolute())
    if getattr(args, "num_samples", None):
        overrides["study.num_samples"] = args.num_samples
    return load_study(args.study, overrides=overrides)


def _tracking_uri_for(study: Any, override: str | None) -> str:
    from tracking.runs import resolve_tracking_uri

    try:
        return resolve_tracking_uri(override or study.settings.tracking_uri, study.storage_root)
    except ValueError as exc:
        raise UserError(f"tracking_uri: {exc}") from None


def _study_or_name(
    arg: str, tracking_uri: str | None, storage_root: str | None = None
) -> tuple[str, str, Any]:
    """(study name, tracking URI, Study or None) from a study file, or a name + --tracking-uri."""
    if Path(arg).is_file():
        study = _load(argparse.Namespace(study=arg, storage_root=storage_root))
        return study.name, _tracking_uri_for(study, tracking_uri), study
    if not tracking_uri:
        raise UserError(
            f"{arg}: no such study file; give the study's YAML file, or its name together with "
            "--tracking-uri"
        )
    from tracking.runs import resolve_tracking_uri

    try:
        return arg, resolve_tracking_uri(tracking_uri, "."), None
    except ValueError as exc:
        raise UserError(f"--tracking-uri: {exc}") from None


def _method_text(header: dict[str, Any]) -> str:
    """``S2AP (rho 0.1, 1 step)`` / ``HYDRA`` from a mask header's ``method`` entry."""
    method = header.get("method")
    if not isinstance(method, dict):
        return str(method or "?")
    kind = method.get("perturbation")
    if kind == "none":
        return "HYDRA"
    name = "S2AP" if kind == "score" else f"HYDRA + {kind} perturbation"
    steps = method.get("ascent_steps")
    return f"{name} (rho {method.get('rho'):.3g}, {steps} step{'s' if steps != 1 else ''})"


def _refuse_existing(path: Path, force: bool, what: str = "--out") -> None:
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists; pass --force to replace it")


# --------------------------------------------------------------------------------------------
# commands


def cmd_run(args: argparse.Namespace) -> int:
    try:
        from tune.run import run_command
    except ImportError as exc:
        raise UserError(f"`s2ap run` is not available in this build ({exc})") from None
    return int(run_command(args))


def cmd_tune(args: argparse.Namespace) -> int:
    from tune.service import LaunchOptions, run_study

    study = _load(args)
    options = LaunchOptions(
        address=args.address,
        resume=args.resume,
        overwrite=args.overwrite,
        tracking_uri=args.tracking_uri,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        ray_temp_dir=args.ray_temp_dir,
        skip_resource_check=args.skip_resource_check,
        shared_storage=args.shared_storage,
        test_eval=False if args.no_test_eval else None,
        verbose=0 if args.quiet else args.verbose,
    )
    return run_study(study, options).exit_code


def cmd_submit(args: argparse.Namespace) -> int:
    from tune.service import submit_study

    study = _load(args)
    extra: list[str] = []
    if args.resume:
        extra.append("--resume")
    if args.overwrite:
        extra.append("--overwrite")
    if args.tracking_uri:
        extra += ["--tracking-uri", args.tracking_uri]
    for item in args.set or []:
        extra += ["--set", item]
    _job_id, status = submit_study(
        study,
        args.address,
        tune_args=extra,
        working_dir=args.working_dir,
        wait=args.wait,
    )
    if args.wait:
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tune.service import format_trials_table, study_status

    study = _load(args)
    status = study_status(study)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
        return 0
    rows = status["trials"]
    print(f"study {study.name}: {len(rows)} trials in {status['experiment_dir']}")
    print(format_trials_table(study, rows))
    best = status["best"]
    if best:
        obj = study.objective
        print(
            f"\nbest trial: {best['trial_id']} ({obj.metric} {obj.mode} = "
            f"{best['metrics'].get(obj.metric)})"
        )
        for k, v in best["config"].items():
            print(f"  {k} = {v!r}")
        if status.get("test"):
            t = status["test"]
            shown = ", ".join(
                f"{k.removeprefix('test_')} {t[k]:.4f}"
                for k in ("test_clean_acc", "test_pgd_acc", "test_autoattack_acc")
                if isinstance(t.get(k), float)
            )
            print(f"  test: {shown}")
    else:
        print("\nno completed trial yet")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from tune.service import study_status
    from tune.trainable import evaluate_trial_checkpoint

    study = _load(args)
    status = study_status(study)
    if args.trial:
        rows = [r for r in status["trials"] if r["trial_id"] == args.trial]
        if not rows:
            ids = ", ".join(r["trial_id"] for r in status["trials"])
            raise UserError(f"--trial {args.trial}: no such trial in {study.name} ({ids})")
        row = rows[0]
    else:
        row = status["best"]
        if row is None:
            raise UserError(f"study {study.name} has no completed trial; pass --trial ID")
    if not row.get("checkpoint"):
        raise UserError(f"trial {row['trial_id']} has no checkpoint")
    overrides: dict[str, Any] = {}
    if args.n_examples:
        overrides["n_examples"] = args.n_examples
    if args.no_autoattack:
        overrides["autoattack"] = False
    gpu = 1.0 if torch.cuda.is_available() and not args.cpu else 0.0
    result = evaluate_trial_checkpoint(row["checkpoint"], evaluate_overrides=overrides, gpu=gpu)
    print(json.dumps({"trial_id": row["trial_id"], **result}, indent=2, default=str))
    return 0


def cmd_masks_pull(args: argparse.Namespace) -> int:
    from tracking.pull import pull_best_mask

    name, uri, study = _study_or_name(args.study, args.tracking_uri, args.storage_root)
    metric = args.metric or (study.objective.metric if study else "val_robust_acc")
    mode = args.mode or (study.objective.mode if study else "max")
    out = Path(args.out).absolute()
    from tracking.artifacts import MASK_SUFFIX

    _refuse_existing(out / f"final{MASK_SUFFIX}", args.force)
    pulled = pull_best_mask(
        uri, name, out, metric=metric, mode=mode, with_weights=args.with_weights
    )
    header = pulled.header
    print(f"best trial {pulled.trial_id} (run {pulled.run_id}) by {metric} {mode}")
    sparsity = header.get("global_sparsity", float("nan"))
    where = f"{header.get('architecture', '?')} on {header.get('dataset', '?')}"
    print(
        f"mask:    {pulled.mask_path}  (sparsity {sparsity:.4f}, {where}, {_method_text(header)})"
    )
    if pulled.weights_path:
        print(f"weights: {pulled.weights_path}")
    print(f"info:    {pulled.info_path}")
    return 0


def _load_checkpoint_state(path: Path) -> dict[str, Any]:
    from tracking.artifacts import load_state_dict

    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file")
    try:
        state = load_state_dict(path)
    except Exception as exc:
        raise UserError(f"--checkpoint {path}: not a state dict ({exc})") from None
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def cmd_masks_apply(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from s2ap.masking import apply_masks_to_state_dict
    from tracking.artifacts import load_masks, save_state_dict

    mask_path, out = Path(args.mask), Path(args.out).absolute()
    if not mask_path.is_file():
        raise UserError(f"{mask_path}: no such mask file")
    _refuse_existing(out, args.force)
    masks, header = load_masks(mask_path)
    state = _load_checkpoint_state(Path(args.checkpoint))
    try:
        pruned = apply_masks_to_state_dict(state, masks)
    except ValueError as exc:
        raise UserError(f"{mask_path} does not fit {args.checkpoint}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_state_dict(out, pruned)
    else:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-")
        os.close(fd)
        try:
            torch.save(pruned, tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    print(
        f"wrote {out}: {len(masks)} masked layers, sparsity {1 - kept / max(total, 1):.4f} "
        f"({_method_text(header)} mask of {header.get('architecture', '?')})"
    )
    return 0


def cmd_masks_diff(args: argparse.Namespace) -> int:
    from s2ap.metrics import mask_hamming
    from tracking.artifacts import load_masks

    for p in (args.a, args.b):
        if not Path(p).is_file():
            raise UserError(f"{p}: no such mask file")
    a, _ = load_masks(args.a)
    b, _ = load_masks(args.b)
    try:
        overall, per_layer = mask_hamming(a, b)
    except ValueError as exc:
        raise UserError(f"the masks cannot be compared: {exc}") from None
    if args.json:
        print(json.dumps({"overall": overall, "per_layer": per_layer}, indent=2))
        return 0
    width = max((len(n) for n in per_layer), default=5)
    print(f"{'layer'.ljust(width)}  hamming")
    for name, d in per_layer.items():
        print(f"{name.ljust(width)}  {d:.6f}")
    print(f"{'overall'.ljust(width)}  {overall:.6f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tune.report import write_report

    targets = []
    for arg in args.studies:
        name, uri, _ = _study_or_name(arg, args.tracking_uri, args.storage_root)
        targets.append((name, uri))
    out = Path(args.out).absolute()
    command = "s2ap report " + " ".join([*args.studies, "--out", args.out])
    report = write_report(targets, out, figures_dir=args.figures_dir, command=command)
    print(f"wrote {out} ({len(report.runs)} trials, {len(report.claims)} claims checked)")
    for claim in report.claims:
        print(f"  {claim.verdict:<12} {claim.claim}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import time

    from tracking.server import MlflowServer

    study = _load(args)
    uri = _tracking_uri_for(study, args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"study {study.name} is tracked by the MLflow server at {uri}; open it in a browser")
        return 0
    db = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not db.is_file():
        raise UserError(
            f"no MLflow store at {db} yet; run the study first (s2ap tune {args.study})"
        )
    log_dir = study.storage_root / ".mlflow-ui"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(
        backend_store_uri=uri,
        artifacts_destination=study.storage_root / "mlartifacts",
        log_dir=log_dir,
        host=args.host,
        port=args.port,
    )
    with server:
        print(f"MLflow UI for study {study.name}: {server.url}  (Ctrl-C to stop)", flush=True)
        try:
            while server.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


# --------------------------------------------------------------------------------------------
# parser


def _add_study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study file (YAML: run config + study: + search_space:)")
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a field of the study file (repeatable), e.g. --set study.num_samples=4",
    )
    p.add_argument("--storage-root", help="override study.storage_root (relative to the cwd)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2ap",
        description="Hyperparameter studies for adversarial pruning with S2AP "
        "(Ray Tune + Optuna + ASHA, tracked in MLflow).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run one pipeline (pretrain -> prune -> finetune) without Ray")
    try:
        from tune.run import add_run_arguments

        add_run_arguments(p)
    except ImportError:
        p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tune", help="launch (or --resume) a study")
    _add_study_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the study's results, start over"
    )
    p.add_argument(
        "--address",
        help="join a Ray cluster (auto, or HOST:PORT of the head); default: a local Ray runtime",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides study.tracking_uri)")
    p.add_argument("--num-samples", type=int, help="override study.num_samples")
    p.add_argument("--num-cpus", type=int, help="local runtime: CPUs Ray may use (default: all)")
    p.add_argument("--num-gpus", type=int, help="local runtime: GPUs Ray may use (default: all)")
    p.add_argument("--ray-temp-dir", help="local runtime: Ray's temp dir (keep the path short)")
    p.add_argument(
        "--skip-resource-check",
        action="store_true",
        help="do not check that a node can hold a trial (autoscaling clusters)",
    )
    p.add_argument(
        "--shared-storage",
        action="store_true",
        help="the storage root is shared storage on every node (silences the multi-node warning)",
    )
    p.add_argument(
        "--no-test-eval", action="store_true", help="skip the best trial's test evaluation"
    )
    p.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2, 3), help="Tune output")
    p.add_argument("-q", "--quiet", action="store_true", help="Tune output off (verbose 0)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("submit", help="submit a study to a Ray cluster as a Ray Job")
    _add_study_args(p)
    p.add_argument("--address", required=True, help="the head's dashboard URL, http://HEAD:8265")
    p.add_argument(
        "--working-dir", help="folder uploaded with the job (default: the study's folder)"
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI the job uses")
    p.add_argument("--resume", action="store_true", help="the job resumes the study")
    p.add_argument("--overwrite", action="store_true", help="the job starts the study over")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 iff it succeeded")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="trials and best configuration of a study (starts nothing)")
    _add_study_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "evaluate", help="test-set evaluation of a trial's checkpoint (default: best)"
    )
    _add_study_args(p)
    p.add_argument("--trial", help="trial id (default: the best completed trial)")
    p.add_argument("--n-examples", type=int)
    p.add_argument("--no-autoattack", action="store_true")
    p.add_argument("--cpu", action="store_true", help="evaluate on the CPU even with a GPU")
    p.set_defaults(func=cmd_evaluate)

    masks = sub.add_parser("masks", help="pull, apply and compare masks").add_subparsers(
        dest="masks_command", required=True, metavar="ACTION"
    )
    p = masks.add_parser("pull", help="download the best trial's mask from MLflow")
    p.add_argument("study", help="the study file, or the study name with --tracking-uri")
    p.add_argument("--storage-root", help="override study.storage_root (relative to the cwd)")
    p.add_argument("--metric", help="selection metric (default: the study's first objective)")
    p.add_argument("--mode", choices=("max", "min"))
    p.add_argument("--tracking-uri")
    p.add_argument("--out", default="best-mask", help="output folder (default: ./best-mask)")
    p.add_argument("--with-weights", action="store_true", help="also pull the pruned weights")
    p.add_argument("--force", action="store_true", help="replace files in --out")
    p.set_defaults(func=cmd_masks_pull)

    p = masks.add_parser("apply", help="zero the pruned weights of a dense checkpoint")
    p.add_argument("mask", help="a .s2mask file")
    p.add_argument("--checkpoint", required=True, help="dense state dict (.pt or .safetensors)")
    p.add_argument("--out", required=True, help="pruned state dict to write (.pt or .safetensors)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_masks_apply)

    p = masks.add_parser("diff", help="normalised Hamming distance between two masks")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_masks_diff)

    p = sub.add_parser("report", help="a results page testing the paper's claims (from MLflow)")
    p.add_argument("studies", nargs="+", help="study files, or study names with --tracking-uri")
    p.add_argument("--tracking-uri")
    p.add_argument("--storage-root", help="override study.storage_root (relative to the cwd)")
    p.add_argument("--out", default="RESULTS.md", help="the page to write (default RESULTS.md)")
    p.add_argument("--figures-dir", help="where the PNG figures go (default: <out folder>/figures)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="open the MLflow UI of a study's store on 127.0.0.1")
    _add_study_args(p)
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``s2ap`` console script; returns the exit code."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except _user_errors() as exc:
        print(f"s2ap {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("s2ap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
