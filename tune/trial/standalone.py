"""``s2ap run RUN.yaml --out DIR``: one pipeline, in-process, no Ray.

pretrain (or load a dense checkpoint) -> prune -> finetune -> evaluate, writing to ``DIR``:

- ``config.yaml``     the validated configuration, every default filled in
- ``metrics.jsonl``   one JSON line per epoch (all phases)
- ``checkpoint.pt``   the full pipeline state after the last epoch (``--resume`` continues it)
- ``dense.safetensors`` the dense robust model after pretraining (when pretraining ran)
- ``mask.s2mask``     the final mask (bit-packed, hashed; ``s2ap masks diff/apply`` read it)
- ``model.safetensors`` the selected finetuned model, plain architecture, pruned weights zero
- ``summary.json``    validation and test numbers of the selected model

An existing non-empty ``DIR`` is never overwritten: ``--resume`` continues it, ``--force``
replaces it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from s2ap.arms import mask_header
from s2ap.config import ConfigError, RunConfig, load_run_config
from s2ap.pipeline import Pipeline, resolve_device
from tracking.artifacts import file_sha256, save_masks, save_state_dict
from tune.common.files import save_torch, write_json
from tune.common.inputs import UserError, check_config_file, check_writable_folder, parse_set
from tune.common.untrusted import check_tensor_file, load_tensor_file

__all__ = ["run_command", "run_to_folder"]

CHECKPOINT = "checkpoint.pt"


def _check_output(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse an ``--out`` this run cannot use; writes nothing (:func:`_prepare_output` does)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder (it is created if missing)")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: {out} has no {CHECKPOINT} to continue from")
        check_tensor_file(out / CHECKPOINT)
        return
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out {out} exists and is not empty; pass --resume to continue that run or "
            "--force to replace it"
        )
    check_writable_folder(out, "--out")


def _check_inputs(cfg: RunConfig, device: str | None) -> None:
    """What the run reads besides the config: the data (files, options, the validation split:
    :mod:`s2ap.data.checks`), the device it asks for, the dense model."""
    from s2ap.data.checks import DataCheckError, check_data

    try:
        download_into = check_data(cfg.data)
    except DataCheckError as exc:
        raise ConfigError(str(exc)) from None
    if download_into is not None:
        check_writable_folder(download_into, "data.root (the download goes there)")
    try:
        resolve_device(device or cfg.device)
    except RuntimeError as exc:
        field = "--device" if device else "device"
        raise ConfigError(f"{field}: {exc}") from None
    if cfg.dense.checkpoint:
        if not Path(cfg.dense.checkpoint).is_file():
            raise ConfigError(
                f"dense.checkpoint: {cfg.dense.checkpoint} does not exist; give the dense "
                "model's state dict, or remove dense.checkpoint to pretrain one"
            )
        check_tensor_file(cfg.dense.checkpoint)


def _prepare_output(out: Path, *, resume: bool, force: bool) -> None:
    if resume:
        return
    if out.is_dir() and any(out.iterdir()) and force:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop lines of epochs after the checkpoint (written just before a kill), so none repeats."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["epoch"] <= last_epoch]
    if len(kept) != len(lines):
        path.write_text("".join(ln + "\n" for ln in kept))


def run_to_folder(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline, writing the files listed in the module docstring to ``out``.

    The pipeline is built (data loaded, checkpoint restored) before ``out`` is touched: a run
    that cannot start leaves nothing behind. ``force`` replaces a non-empty ``out``.
    """
    out = out.resolve()
    pipeline = Pipeline(cfg, device=device)
    total = sum(getattr(cfg, p).epochs for p in pipeline.phases)
    if resume:
        pipeline.load_state_dict(load_tensor_file(out / CHECKPOINT, map_location=pipeline.device))
        _truncate_metrics(out / "metrics.jsonl", pipeline.global_epoch)
    _prepare_output(out, resume=resume, force=force)
    if not resume:
        (out / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=pipeline.global_epoch, disable=not progress, unit="epoch")
    started = time.perf_counter()
    dense_file = out / "dense.safetensors"
    if not dense_file.exists() and cfg.dense.checkpoint:
        dense_file = Path(cfg.dense.checkpoint)
    dense_hash = file_sha256(dense_file) if dense_file.exists() else None
    with (out / "metrics.jsonl").open("a") as metrics_file:
        while not pipeline.done:
            phase = pipeline.phase
            record = pipeline.step()
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if phase == "pretrain" and pipeline.phase != "pretrain":
                dense_hash = save_state_dict(dense_file, pipeline.dense_state_dict())
            save_torch(pipeline.state_dict(), out / CHECKPOINT)
            bar.set_description(phase)
            bar.set_postfix(
                val_rob=f"{record['val_robust_acc']:.3f}",
                val_clean=f"{record['val_clean_acc']:.3f}",
            )
            bar.update(1)
    bar.close()
    return _write_results(pipeline, out, dense_hash, time.perf_counter() - started)


def _write_results(
    pipeline: Pipeline, out: Path, dense_hash: str | None, train_time_s: float
) -> dict[str, Any]:
    """The mask(s), the selected model and ``summary.json`` (with the test numbers)."""
    cfg = pipeline.cfg
    summary: dict[str, Any] = {"name": cfg.name, "train_time_s": train_time_s}
    if pipeline.masking is not None:
        header = mask_header(cfg, dense_hash)
        summary["mask_sha256"] = save_masks(out / "mask.s2mask", pipeline.selected_masks(), header)
        if pipeline.prune_masks is not None:
            save_masks(out / "mask-prune.s2mask", pipeline.prune_masks, header)
        sparsity, _ = pipeline.masking.sparsity_report()
        summary["sparsity"] = sparsity
    save_state_dict(out / "model.safetensors", pipeline.selected_dense_state_dict())
    summary["selected"] = {
        "epoch": pipeline.best["epoch"],
        "phase": pipeline.best.get("phase"),
        "val_robust_acc": pipeline.best["val_robust_acc"],
    }
    summary["test"] = pipeline.evaluate_test()
    write_json(out / "summary.json", summary)
    return summary


def run_command(args: argparse.Namespace) -> int:
    """Entry point of ``s2ap run`` (arguments: :mod:`tune.cli.run`); returns the exit code
    (2 for bad input)."""
    out = Path(args.out)
    try:
        check_config_file(args.config, "run file")
        cfg = load_run_config(args.config, parse_set(args.set))
        _check_output(out, resume=args.resume, force=args.force)
        _check_inputs(cfg, args.device)
    except (ConfigError, UserError) as e:
        print(f"s2ap run: {e}", file=sys.stderr)
        return 2
    summary = run_to_folder(
        cfg,
        out,
        resume=args.resume,
        force=args.force,
        device=args.device,
        progress=not args.quiet,
    )
    test = summary["test"]
    parts = [f"{k.removeprefix('test_')}={v:.4f}" for k, v in test.items() if k.endswith("_acc")]
    print(f"s2ap run: done in {summary['train_time_s']:.0f}s; test " + ", ".join(parts))
    print(f"s2ap run: results in {out.resolve()} (summary.json, mask.s2mask, model.safetensors)")
    return 0
