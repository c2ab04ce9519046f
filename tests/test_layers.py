"""The one import direction: tune -> tracking -> s2ap; and inside tune/, its sub-packages by job
in one direction too: cli -> driver -> cluster -> results -> trial -> study -> common."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "s2ap": {"ray", "mlflow", "optuna", "tune", "tracking", "tests"},
    "tracking": {"ray", "tune", "tests"},
    "tune": {"tests"},  # test support code (tests/support) never ships
}

#: tune/'s sub-packages, lowest first: each may import only itself and those before it.
TUNE_LAYERS = ("common", "study", "trial", "results", "cluster", "driver", "cli")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            # `from tune import study` imports the sub-package tune.study
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def imported_roots(path: Path) -> set[str]:
    return {m.split(".")[0] for m in imported_modules(path)}


def tune_layer(module: str) -> str | None:
    """The sub-package of tune/ a module name belongs to (``None``: not one of them)."""
    parts = module.split(".")
    if parts[0] != "tune" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in TUNE_LAYERS else None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_does_not_import_upwards(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"imports against the layer direction: {offenders}"


def test_tune_is_made_of_its_sub_packages():
    """Every module of tune/ lives in one of the sub-packages (the layers below)."""
    loose = sorted(
        str(f.relative_to(ROOT)) for f in (ROOT / "tune").glob("*.py") if f.name != "__init__.py"
    )
    assert not loose, f"modules outside tune/'s sub-packages {TUNE_LAYERS}: {loose}"
    packages = {p.name for p in (ROOT / "tune").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(TUNE_LAYERS)


@pytest.mark.parametrize("layer", TUNE_LAYERS)
def test_tune_sub_package_imports_only_downwards(layer):
    rank = {name: i for i, name in enumerate(TUNE_LAYERS)}
    offenders = {}
    for f in sorted((ROOT / "tune" / layer).rglob("*.py")):
        upward = sorted(
            m
            for m in imported_modules(f)
            if (target := tune_layer(m)) is not None and rank[target] > rank[layer]
        )
        if upward:
            offenders[str(f.relative_to(ROOT))] = upward
    allowed = ", ".join(TUNE_LAYERS[: rank[layer] + 1])
    assert not offenders, f"tune/{layer} may import only tune.{{{allowed}}}: {offenders}"


def test_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom ray import tune\ndef f():\n    import mlflow.tracking\n"
        "    from tune.driver.launch import run_study\n"
    )
    assert imported_roots(bad) & FORBIDDEN["s2ap"] == {"ray", "mlflow", "tune"}
    assert tune_layer("tune.driver.launch") == "driver"
    assert "tune.driver.launch" in imported_modules(bad)


#: What ``s2ap status`` and ``s2ap masks pull`` import, and the study file they validate: none of
#: it may import torch, which costs seconds before the command does anything (docs/PERFORMANCE.md).
TORCH_FREE = (
    "s2ap",
    "s2ap.data",
    "s2ap.config",
    "s2ap.arms",
    "s2ap.architectures",
    "tracking.artifacts",
    "tracking.pull",
    "tune.study.file",
    "tune.results.status",
)


def test_read_paths_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, name\n"
        "from tune.study.file import load_study\n"
        "load_study('configs/quickstart.yaml')\n"
        "assert 'torch' not in sys.modules, 'validating a study file'\n"
        "import s2ap, s2ap.data\n"
        "for package in (s2ap, s2ap.data):  # each lazy name resolves\n"
        "    assert all(getattr(package, n) is not None for n in package.__all__)\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
