"""``s2ap report STUDY.yaml... [--out RESULTS.md]``: a results page testing the paper's claims,
read from MLflow (:mod:`tracking.report`). Each study file names its own store (its
``storage_root``), so one page can read studies from several stores; the page has one section
per setting (data and model), in the order the studies are named."""

from __future__ import annotations

import argparse
import shlex
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
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="STUDY=TEXT",
        help="the heading of the section STUDY is in (default: the data and model read from "
        "the runs, e.g. 'CIFAR-10 (JPEG re-encoding), vgg6_narrow'); repeatable",
    )
    p.add_argument(
        "--machine",
        action="append",
        default=[],
        metavar="STUDY=TEXT",
        help="the machine STUDY ran on, for runs that do not record it (no s2ap.machine "
        "tag), e.g. '2 shared vCPUs (AMD EPYC)'; repeatable",
    )


def _per_study(pairs: list[str], flag: str, names: list[str]) -> dict[str, str]:
    """``STUDY=TEXT`` options by study name; a name that is not among the studies is refused."""
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name or not text.strip():
            raise UserError(f"{flag} {pair!r}: give STUDY=TEXT (the study's name, then its text)")
        if name not in names:
            raise UserError(f"{flag} {pair!r}: no study {name!r} among {', '.join(names)}")
        out[name] = text.strip()
    return out


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
    names = [name for name, _ in targets]
    labels = _per_study(args.label, "--label", names)
    machines = _per_study(args.machine, "--machine", names)
    options = [
        f"--{flag} {shlex.quote(pair)}"
        for flag in ("label", "machine")
        for pair in getattr(args, flag)
    ]
    command = "s2ap report " + " ".join([*args.studies, "--out", args.out, *options])
    try:
        report = write_report(
            targets,
            out,
            figures_dir=args.figures_dir,
            command=command,
            labels=labels,
            machines=machines,
        )
    except ReportError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {out} ({len(report.runs)} trials, {len(report.claims)} claims checked)")
    for section in report.sections:
        print(f"{section.info.title}:")
        for claim in section.claims:
            print(f"  {claim.verdict:<12} {claim.claim}")
    return 0


COMMAND = Command(
    "report", "a results page testing the paper's claims (from MLflow)", add_arguments, run
)
