"""What one page section ran on: the setting's name, its model, its budget and its machine.

A *setting* is the data and the model of a group of runs (:attr:`TrialRun.setting`); the page
never compares runs of two settings. Its heading is a label given on the command line
(``s2ap report --label STUDY=TEXT``), else the data's name read from the runs' params
(``cifar10`` -> CIFAR-10; an ``imagefolder`` whose folder is named like ``cifar10-jpeg`` ->
"CIFAR-10 (JPEG re-encoding)"; otherwise the folder's name) and the model. Each study's
``study.description`` is quoted beside its name. The machine comes from
``s2ap report --machine STUDY=TEXT``, else the runs' ``s2ap.machine`` tag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tracking.report.trials import StudyInfo, TrialRun

__all__ = [
    "MACHINE_TAG",
    "SettingInfo",
    "dataset_name",
    "describe_setting",
    "model_parameters",
]

#: The tag recording the machine a run ran on (:func:`tracking.params.version_tags`).
MACHINE_TAG = "s2ap.machine"
#: Names of the sources whose data say what they are.
_SOURCE_NAMES = {
    "digits": "digits (scikit-learn 8x8)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
    "synthetic": "synthetic images",
}


@dataclasses.dataclass
class SettingInfo:
    """A section's heading and the lines that say what its runs ran on."""

    title: str
    slug: str
    lines: list[str]


def dataset_name(source: str, folder: str) -> str:
    """A readable name of the data, from ``data.source`` and the data folder's name: only what
    the names themselves say (an image folder named ``cifar10-jpeg`` is CIFAR-10 re-encoded as
    JPEG; one named ``birds`` stays "image folder birds")."""
    if source != "imagefolder":
        return _SOURCE_NAMES.get(source, source)
    m = re.search(r"cifar[-_]?(100|10)(?!\d)", folder, re.IGNORECASE)
    if m is None:
        return f"image folder {folder}" if folder else "image folder"
    jpeg = re.search(r"jpe?g", folder, re.IGNORECASE)
    return f"CIFAR-{m[1]} ({'JPEG re-encoding' if jpeg else 'image folder'})"


def _input_shape(params: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(channels, image size, classes) of the run's data without loading it: known for the
    built-in sources, read from the folder (class folders, one image header) for an image
    folder that is on this machine."""
    from s2ap.data.torchvision_sources import TORCHVISION_SOURCES

    source = params.get("data.source", "")
    if source == "digits":
        return 1, 8, 10
    spec = next((s for s in TORCHVISION_SOURCES if s.name == source), None)
    if spec is not None:
        return len(spec.mean), 32, spec.num_classes  # CIFAR-10/100 and SVHN: 32x32
    try:
        options = json.loads(params.get("data.options", "{}"))
    except ValueError:
        options = {}
    if source == "synthetic":
        from s2ap.data.embedded import SYNTHETIC_OPTIONS

        o = {**SYNTHETIC_OPTIONS, **options}
        return int(o["channels"]), int(o["image_size"]), int(o["num_classes"])
    if source == "imagefolder":
        return _folder_shape(Path(params.get("data.root", "")), options.get("channels"))
    return None


def _folder_shape(root: Path, channels: int | None) -> tuple[int, int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        classes = sorted(p for p in (root / "train").iterdir() if p.is_dir())
        first = min(p for p in classes[0].iterdir() if p.is_file())
        with Image.open(first) as img:  # the header only
            size, mode = img.size[0], img.mode
    except (OSError, IndexError, ValueError, UnidentifiedImageError):
        return None
    if channels is None:
        channels = 1 if mode in ("1", "L", "I", "I;16", "F") else 3
    return int(channels), size, len(classes)


def model_parameters(params: Mapping[str, str]) -> int | None:
    """The trainable parameters of the run's model, built from the model registry for its data
    shape (``None`` when the shape or the architecture is unknown here)."""
    from s2ap.architectures import create_model

    shape = _input_shape(params)
    if shape is None:
        return None
    channels, size, classes = shape
    try:
        model = create_model(
            params.get("model.arch", ""),
            num_classes=classes,
            in_channels=channels,
            image_size=size,
            mean=(0.5,) * channels,
            std=(0.25,) * channels,
        )
    except ValueError:
        return None
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _values(runs: Iterable[TrialRun], key: str) -> list[str]:
    """The distinct values of param ``key`` over the runs that log it, numbers in increasing
    order, text in order of appearance."""
    vals = list(dict.fromkeys(r.params[key] for r in runs if key in r.params))
    try:
        return sorted(vals, key=float)
    except ValueError:
        return vals


def _num(text: str) -> str:
    """``"30000.0"`` -> ``30,000``; ``"0.2"`` -> ``0.2``."""
    try:
        v = float(text)
    except ValueError:
        return text
    return f"{v:,.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:g}"


def _join(runs: Sequence[TrialRun], key: str) -> str:
    """The distinct values of param ``key`` joined with ``/``; ``–`` when no run logs it (a
    HYDRA-only study logs no warm-up)."""
    vals = _values(runs, key)
    return "/".join(_num(v) for v in vals) if vals else "–"


def _eps(text: str) -> str:
    """``0.0313...`` -> ``8/255``; ``0.1`` -> ``0.1``."""
    try:
        v = float(text)
    except ValueError:
        return text
    k = v * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{v:g}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "running or not recorded"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower() or "setting"


def _first(texts: Iterable[str]) -> str:
    return next((t for t in texts if t), "")


def _data_line(runs: Sequence[TrialRun], name: str) -> str:
    source, folder, _ = runs[0].setting
    where = f"`{source}`" + (f", folder `{folder}`" if folder else "")
    per_epoch = sorted({n for r in runs if (n := r.images_per_epoch())})
    trained = (
        f"{'/'.join(f'{n:,}' for n in per_epoch)} training images per epoch"
        if per_epoch
        else "training images per epoch not recorded"
    )
    held = _join(runs, "data.val_size")
    reads = _join(runs, "validation.max_examples")
    reads = "all of it" if reads in ("None", "–") else f"its first {reads}"
    return (
        f"**Data**: {name} ({where}); {trained} (data.val_size {held} held out for "
        f"validation; validation reads {reads})."
    )


def _model_line(runs: Sequence[TrialRun]) -> str:
    arch = _join(runs, "model.arch")
    counts = {model_parameters(r.params) for r in runs[:1]}
    n = counts.pop() if counts else None
    size = f" ({n:,} parameters)" if n else ""
    return (
        f"**Model**: `{arch}`{size}, pruned to sparsity {_join(runs, 'prune.sparsity')} "
        f"(scope {_join(runs, 'prune.scope')})."
    )


def _budget_line(runs: Sequence[TrialRun]) -> str:
    full = [r for r in runs if not r.prune_only]
    tested = [r for r in full if "test_clean_acc" in r.metrics]
    # The count the evaluation logged (test_examples), else the configured one.
    test_n = sorted(
        {
            f"{r.metrics['test_examples']:,.0f}"
            if "test_examples" in r.metrics
            else _num(r.params.get("evaluate.n_examples", "?"))
            for r in tested
        }
    )
    aa = [r for r in tested if "test_autoattack_acc" in r.metrics]
    test = (
        f"test: clean and PGD-{_join(tested, 'evaluate.pgd_steps')} on {'/'.join(test_n)} "
        "images"
        + (
            f", AutoAttack (standard, L-inf) on {_join(aa, 'evaluate.autoattack_examples')}"
            if aa
            else ", no AutoAttack"
        )
        if tested
        else "no test evaluation"
    )
    return (
        f"**Budget**: epochs pretrain {_join(runs, 'pretrain.epochs')} (once, shared), prune "
        f"{_join(runs, 'prune.epochs')} (warm-up {_join(runs, 'prune.warmup_epochs')}), "
        f"finetune {_join(full or runs, 'finetune.epochs')}; eps "
        f"{'/'.join(_eps(v) for v in _values(runs, 'threat.eps')) or '?'}, training "
        f"PGD-{_join(runs, 'threat.steps')}, validation PGD-{_join(runs, 'validation.pgd_steps')}; "
        f"{test}."
    )


def _machine_line(
    runs: Sequence[TrialRun], studies: Sequence[StudyInfo], machines: Mapping[str, str]
) -> str:
    given = _first(machines.get(s.name, "") for s in studies)
    tagged = Counter(r.tags[MACHINE_TAG] for r in runs if r.tags.get(MACHINE_TAG))
    devices = sorted({r.tags.get("s2ap.device", "") for r in runs} - {""})
    machine = given or (tagged.most_common(1)[0][0] if tagged else "")
    parts = [machine or "not recorded (give it with `s2ap report --machine STUDY=TEXT`)"]
    if devices:
        parts.append(f"device {'/'.join(devices)}")
    conc = sorted(
        {
            (s.params.get("study.max_concurrent_trials", "?"), s.params.get("study.resources.cpu"))
            for s in studies
            if s.params
        }
    )
    for trials, cpu in conc:
        parts.append(f"{trials} trial(s) at a time, {_num(cpu or '?')} CPU(s) each")
    return f"**Machine**: {'; '.join(dict.fromkeys(parts))}."


def _studies_line(runs: Sequence[TrialRun], studies: Sequence[StudyInfo]) -> str:
    counts = Counter(r.study for r in runs)
    parts = []
    for s in studies:
        text = f"`{s.name}` ({counts[s.name]} finished trials, wall time {_duration(s.wall_s)})"
        parts.append(text + (f": {s.description}" if s.description else ""))
    return f"**Studies**: {'; '.join(parts)}."


def describe_setting(
    runs: Sequence[TrialRun],
    studies: Sequence[StudyInfo],
    *,
    labels: Mapping[str, str] | None = None,
    machines: Mapping[str, str] | None = None,
) -> SettingInfo:
    """The heading and the setup lines of one setting's section (``runs`` share
    :attr:`TrialRun.setting`; ``studies`` are the studies they come from, in page order)."""
    source, folder, arch = runs[0].setting
    given = _first((labels or {}).get(s.name, "") for s in studies)
    name = dataset_name(source, folder)
    title = given or f"{name}, {arch}"
    lines = [
        _data_line(runs, name),
        _model_line(runs),
        _budget_line(runs),
        _machine_line(runs, studies, machines or {}),
        _studies_line(runs, studies),
    ]
    return SettingInfo(title, _slug(f"{folder or source}-{arch}"), lines)
