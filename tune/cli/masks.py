"""``s2ap masks pull|apply|diff``: the best trial's mask out of MLflow, a mask applied to a dense
checkpoint, two masks compared."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tune.cli.common import Command, require_store, study_or_name
from tune.common.inputs import UserError, check_output_file, check_writable_folder, refuse_existing

__all__ = ["COMMAND"]


# --- pull ---------------------------------------------------------------------------------------
def add_pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "study",
        help="the study file, the study name with --tracking-uri, or a registered model URI "
        "(models:/<study>@best, models:/<study>/<version>; the store from --tracking-uri or "
        "MLFLOW_TRACKING_URI)",
    )
    p.add_argument("--storage-root", help="override study.storage_root (relative to the cwd)")
    p.add_argument("--metric", help="selection metric (default: the study's first objective)")
    p.add_argument("--mode", choices=("max", "min"))
    p.add_argument("--tracking-uri")
    p.add_argument("--out", default="best-mask", help="output folder (default: ./best-mask)")
    p.add_argument("--with-weights", action="store_true", help="also pull the pruned weights")
    p.add_argument("--force", action="store_true", help="replace files in --out")


def pull(args: argparse.Namespace) -> int:
    from tracking.artifacts import MASK_SUFFIX
    from tracking.pull import pull_best_mask

    out = Path(args.out).absolute()
    check_writable_folder(out, "--out")
    refuse_existing(out / f"final{MASK_SUFFIX}", args.force)
    if args.study.startswith("models:/"):
        return _pull_registered(args, out)
    name, uri, study = study_or_name(args.study, args.tracking_uri, args.storage_root)
    require_store(uri, name)
    metric = args.metric or (study.objective.metric if study else "val_robust_acc")
    mode = args.mode or (study.objective.mode if study else "max")
    pulled = pull_best_mask(
        uri, name, out, metric=metric, mode=mode, with_weights=args.with_weights
    )
    print(f"best trial {pulled.trial_id} (run {pulled.run_id}) by {metric} {mode}")
    _print_pulled(pulled)
    return 0


def _print_pulled(pulled: Any) -> None:
    header = pulled.header
    sparsity = header.get("global_sparsity", float("nan"))
    where = f"{header.get('architecture', '?')} on {header.get('dataset', '?')}"
    from s2ap.arms import method_text

    print(f"mask:    {pulled.mask_path}  (sparsity {sparsity:.4f}, {where}, {method_text(header)})")
    if pulled.weights_path:
        print(f"weights: {pulled.weights_path}")
    print(f"info:    {pulled.info_path}")


def _pull_registered(args: argparse.Namespace, out: Path) -> int:
    """``masks pull models:/<study>@best``: the version's run, through MLflow's registry."""
    import os

    from tracking.client import resolve_tracking_uri
    from tracking.pull import pull_registered_mask
    from tracking.registry import parse_model_uri

    if args.metric or args.mode:
        raise UserError(f"{args.study} names one model version; --metric/--mode do not apply")
    try:
        name, _, _ = parse_model_uri(args.study)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    given = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not given:
        raise UserError(
            f"{args.study}: say which MLflow store holds it with --tracking-uri (or set "
            "MLFLOW_TRACKING_URI), e.g. sqlite:////abs/studies/mlflow.db or http://host:5000"
        )
    try:
        uri = resolve_tracking_uri(given, ".")
    except ValueError as exc:
        raise UserError(f"--tracking-uri: {exc}") from None
    require_store(uri, name)
    try:
        pulled = pull_registered_mask(uri, args.study, out, with_weights=args.with_weights)
    except LookupError as exc:
        raise UserError(str(exc)) from None
    model = json.loads(Path(pulled.info_path).read_text())["model"]
    print(
        f"{args.study} = version {model['version']} of {model['name']!r}: trial "
        f"{pulled.trial_id} (run {pulled.run_id})"
    )
    _print_pulled(pulled)
    return 0


# --- apply --------------------------------------------------------------------------------------
def add_apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mask", help="a .s2mask file")
    p.add_argument("--checkpoint", required=True, help="dense state dict (.pt or .safetensors)")
    p.add_argument("--out", required=True, help="pruned state dict to write (.pt or .safetensors)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


def _load_checkpoint_state(path: Path) -> dict[str, Any]:
    from tracking.artifacts import load_state_dict

    try:
        state: dict[str, Any] = load_state_dict(path)  # a .pt file may hold a wrapper dict
    except Exception as exc:
        raise UserError(f"--checkpoint {path}: not a state dict ({exc})") from None
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def _save_state(out: Path, state: dict[str, Any]) -> None:
    """Safetensors by suffix, else torch.save; atomically (a temp file renamed into place)."""
    from tracking.artifacts import save_state_dict
    from tune.common.files import save_torch

    if out.suffix == ".safetensors":
        save_state_dict(out, state)
    else:
        save_torch(state, out)


def apply(args: argparse.Namespace) -> int:
    from s2ap.masking import apply_masks_to_state_dict
    from tracking.artifacts import load_masks
    from tune.common.untrusted import check_tensor_file

    mask_path, checkpoint = Path(args.mask), Path(args.checkpoint)
    out = Path(args.out).absolute()
    if not mask_path.is_file():
        raise UserError(f"{mask_path}: no such mask file")
    if not checkpoint.is_file():
        raise UserError(f"--checkpoint {checkpoint}: no such file")
    check_output_file(out, "--out", force=args.force)
    check_tensor_file(checkpoint)  # refuses pickled objects other than tensors, naming the file
    masks, header = load_masks(mask_path)
    state = _load_checkpoint_state(checkpoint)
    try:
        pruned = apply_masks_to_state_dict(state, masks)
    except ValueError as exc:
        raise UserError(f"{mask_path} does not fit {args.checkpoint}: {exc}") from None
    _save_state(out, pruned)
    from s2ap.arms import method_text

    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    print(
        f"wrote {out}: {len(masks)} masked layers, sparsity {1 - kept / max(total, 1):.4f} "
        f"({method_text(header)} mask of {header.get('architecture', '?')})"
    )
    return 0


# --- diff ---------------------------------------------------------------------------------------
def add_diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")


def diff(args: argparse.Namespace) -> int:
    import json

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


COMMAND = Command(
    "masks",
    "pull, apply and compare masks",
    subcommands=(
        Command("pull", "download the best trial's mask from MLflow", add_pull_arguments, pull),
        Command(
            "apply", "zero the pruned weights of a dense checkpoint", add_apply_arguments, apply
        ),
        Command("diff", "normalised Hamming distance between two masks", add_diff_arguments, diff),
    ),
)
