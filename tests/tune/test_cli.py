"""The ``s2ap`` command line: a registry of commands whose parser stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tune.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]


def test_building_the_parser_imports_no_heavy_library() -> None:
    """``s2ap --help`` (and the parsing before ``s2ap run``) must not wait for ray, mlflow,
    torch or optuna: each command imports what it needs when it runs."""
    code = (
        "import sys; from tune.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_registered_command_parses_to_its_run_function() -> None:
    parser = build_parser()
    names = [c.name for c in COMMANDS]
    assert names == ["run", "tune", "submit", "status", "evaluate", "masks", "report", "ui"]
    args = parser.parse_args(["status", "s.yaml", "--json"])
    assert args.func is COMMANDS[3].run and args.json
    masks = {c.name: c for c in COMMANDS[5].subcommands}
    args = parser.parse_args(["masks", "diff", "a.s2mask", "b.s2mask"])
    assert args.func is masks["diff"].run and args.masks_command == "diff"
