"""``s2ap report STUDY.yaml... [--out RESULTS.md]``: a results page testing the paper's claims,
read from MLflow (:mod:`tracking.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tune.cli.common import Command, require_store, study_or_name
from tune.common.inputs import UserError, check_output_file, check_writable_folder

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("studies", nargs="+", help="study files, or study names with --tracking-uri")
    p.add_argument("--tracking-uri")
    p.add_argument("--storage-root", help="override study.storage_root (relative to the cwd)")
    p.add_argument("--out", default="RESULTS.md", help="the page to write (default RESULTS.md)")
    p.add_argument("--figures-dir", help="where the PNG figures go (default: <out folder>/figures)")


def run(args: argparse.Namespace) -> int:
    from tracking.report import ReportError, write_report

    out = Path(args.out).absolute()
    check_output_file(out, "--out", force=True)  # the page is written again on each report
    if args.figures_dir:
        check_writable_folder(args.figures_dir, "--figures-dir")
    targets = []
    for arg in args.studies:
        name, uri, _ = study_or_name(arg, args.tracking_uri, args.storage_root)
        require_store(uri, name)
        targets.append((name, uri))
    command = "s2ap report " + " ".join([*args.studies, "--out", args.out])
    try:
        report = write_report(targets, out, figures_dir=args.figures_dir, command=command)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {out} ({len(report.runs)} trials, {len(report.claims)} claims checked)")
    for claim in report.claims:
        print(f"  {claim.verdict:<12} {claim.claim}")
    return 0


COMMAND = Command(
    "report", "a results page testing the paper's claims (from MLflow)", add_arguments, run
)
