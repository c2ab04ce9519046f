"""The results page: the report (cells, claims, notes), its Markdown and its files.

The page's prose lives in the templates beside this module (``templates/page.md``, ``arms.md``,
``sweep.md``, filled with :class:`string.Template`); this module computes the blocks that go into
them (tables, figure links, notes). A block is either empty or whole lines, each ending in a
newline; a section ends with one blank line, the page with one newline.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import importlib.resources
import math
import os
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tracking.artifacts import atomic_writer
from tracking.plots import save_png
from tracking.report.claims import ClaimResult, judge_claims
from tracking.report.figures import figure_hamming, figure_rho, figure_robust_vs_sparsity
from tracking.report.stats import CANNOT_TELL, REFUTES, SUPPORTS
from tracking.report.tables import (
    ACCURACY_HEADER,
    LANDSCAPE_HEADER,
    SWEEP_HEADER,
    TIME_HEADER,
    accuracy_table,
    hamming_table,
    landscape_table,
    md_table,
    sweep_table,
    time_table,
)
from tracking.report.trials import (
    TEST_METRICS,
    Cell,
    ReportError,
    TrialRun,
    group_cells,
    load_trial_runs,
    share_warmups,
    split_studies,
)

__all__ = ["Report", "build_report", "render_markdown", "repeat_check", "write_report"]

_VERDICT_MARK = {SUPPORTS: "**supports**", REFUTES: "**refutes**", CANNOT_TELL: "cannot tell"}
#: Figure key -> its alt text on the page.
FIGURE_ALT = {
    "robust_vs_sparsity": "AutoAttack accuracy vs sparsity",
    "hamming": "Hamming distance per prune epoch",
    "rho": "AutoAttack accuracy vs rho",
}
#: Run params shown in the setup line: label -> flattened param name.
SETUP_PARAMS = {
    "data": "data.source",
    "model": "model.arch",
    "eps": "threat.eps",
    "PGD steps (training)": "threat.steps",
    "pretrain epochs": "pretrain.epochs",
    "prune epochs": "prune.epochs",
    "warm-up epochs": "prune.warmup_epochs",
    "finetune epochs": "finetune.epochs",
    "AWP gamma": "finetune.awp.gamma",
    "test examples (clean, PGD)": "evaluate.n_examples",
    "PGD steps (test)": "evaluate.pgd_steps",
    "AutoAttack examples": "evaluate.autoattack_examples",
    "sharpness radius": "validation.sharpness_rho",
    "Hessian power iterations": "validation.hessian_iters",
}


@dataclasses.dataclass
class Report:
    """Everything the page shows, computed (what the tests check)."""

    runs: list[TrialRun]
    arm_cells: dict[Cell, list[TrialRun]]
    sweep_cells: dict[Cell, list[TrialRun]]
    claims: list[ClaimResult]
    notes: list[str]


def build_report(runs: Sequence[TrialRun], notes: Sequence[str] = ()) -> Report:
    """Group the runs into cells and judge every claim (no I/O). Runs that log no warm-up
    (HYDRA) are measured after the warm-up of the runs they are compared with
    (:func:`~tracking.report.trials.share_warmups`)."""
    runs = share_warmups(runs)
    arm_runs, sweep_runs = split_studies(runs)
    arm_cells = group_cells(arm_runs)
    sweep_cells = group_cells(sweep_runs)
    claims = judge_claims(arm_cells, sweep_cells)
    return Report(list(runs), arm_cells, sweep_cells, claims, [*notes, *repeat_check(runs)])


def repeat_check(runs: Sequence[TrialRun]) -> list[str]:
    """Notes on configurations (cell and seed) that ran in more than one study: same dense
    model, same seed, so their test numbers should agree; say how far apart they are."""
    groups: dict[tuple[Cell, int], list[TrialRun]] = defaultdict(list)
    for r in runs:
        groups[(r.cell, r.seed)].append(r)
    repeats = [rs for rs in groups.values() if len({r.study for r in rs}) > 1]
    if not repeats:
        return []
    gaps = []
    for rs in repeats:
        for key in TEST_METRICS:
            vals = [r.metrics.get(key, float("nan")) for r in rs]
            if all(math.isfinite(v) for v in vals):
                gaps.append(max(vals) - min(vals))
    studies = sorted({r.study for rs in repeats for r in rs})
    worst = max(gaps) if gaps else float("nan")
    return [
        f"repeat check: {len(repeats)} configuration(s) ran in several studies "
        f"({', '.join(studies)}) with the same seed; the largest difference of a test accuracy "
        f"between the repeats is {worst * 100:.2f} points"
        + (" (bit-identical runs)" if worst == 0 else " (runs are not bit-identical)")
    ]


# --------------------------------------------------------------------------------------------
# Markdown


@functools.cache
def _template(name: str) -> string.Template:
    text = importlib.resources.files(__package__).joinpath("templates", name).read_text("utf-8")
    return string.Template(text)


def _lines(lines: Iterable[str]) -> str:
    """A block: each line followed by a newline."""
    return "".join(f"{line}\n" for line in lines)


def _section(name: str, **blocks: str) -> str:
    return _template(name).substitute(blocks).rstrip("\n") + "\n\n"


def _figure_link(figures: Mapping[str, str], key: str) -> str:
    return f"![{FIGURE_ALT[key]}]({figures[key]})\n\n" if key in figures else ""


def _setup_lines(runs: Sequence[TrialRun]) -> list[str]:
    if not runs:
        return []
    parts = []
    for label, key in SETUP_PARAMS.items():
        # A run logs only the params its arm reads (HYDRA: no warm-up): show the logged ones.
        vals = sorted({r.params[key] for r in runs if key in r.params}) or ["?"]
        parts.append(f"{label} {'/'.join(vals)}")
    dense = sorted({r.tags.get("s2ap.dense_hash", "") for r in runs} - {""})
    commits = sorted({r.tags.get("s2ap.git_commit", "")[:10] for r in runs} - {""})
    lines = ["Setup (from the runs' params): " + "; ".join(parts) + "."]
    if runs[0].params:
        lines.append(
            f"Dense model(s) every trial started from (content hash): {', '.join(dense) or '?'}; "
            f"code commit(s): {', '.join(commits) or '?'}."
        )
    return lines


def _claim_blocks(claims: Sequence[ClaimResult]) -> dict[str, str]:
    mark = [_VERDICT_MARK.get(c.verdict, c.verdict) for c in claims]
    table = md_table(["claim", "verdict"], [[c.claim, m] for c, m in zip(claims, mark)])
    detail = []
    for c, m in zip(claims, mark):
        detail.append(f"- **{c.claim}** — {m}")
        detail += [f"  - {d}" for d in c.detail]
    return {"claims_table": _lines(table), "claims_detail": _lines(detail)}


def _arm_sections(cells: Mapping[Cell, list[TrialRun]], figures: Mapping[str, str]) -> str:
    if not cells:
        return ""
    header, rows = hamming_table(cells)
    return _section(
        "arms.md",
        accuracy_table=_lines(md_table(ACCURACY_HEADER, accuracy_table(cells))),
        robust_vs_sparsity_figure=_figure_link(figures, "robust_vs_sparsity"),
        hamming_table=_lines(md_table(header, rows)),
        hamming_figure=_figure_link(figures, "hamming"),
        landscape_table=_lines(md_table(LANDSCAPE_HEADER, landscape_table(cells))),
        time_table=_lines(md_table(TIME_HEADER, time_table(cells))),
    )


def _sweep_section(cells: Mapping[Cell, list[TrialRun]], figures: Mapping[str, str]) -> str:
    if not cells:
        return ""
    first = next(iter(cells))
    return _section(
        "sweep.md",
        sparsity=f"{first.sparsity:g}",
        finetune=first.finetune,
        sweep_table=_lines(md_table(SWEEP_HEADER, sweep_table(cells))),
        rho_figure=_figure_link(figures, "rho"),
    )


def _appendix_rows(report: Report) -> list[list[str]]:
    """Every cell's runs, once each: study, cell, seed, run id, trial id."""
    rows = []
    seen: set[str] = set()
    for cells in (report.arm_cells, report.sweep_cells):
        for c, rs in cells.items():
            for r in rs:
                if r.run_id not in seen:
                    seen.add(r.run_id)
                    rows.append([r.study, c.label(), str(r.seed), f"`{r.run_id}`", r.trial_id])
    return rows


def render_markdown(
    report: Report,
    *,
    studies: Sequence[str],
    tracking_uris: Sequence[str],
    figures: Mapping[str, str],
    command: str | None = None,
    title: str = "Results: do the paper's claims hold here?",
) -> str:
    """The page as Markdown; ``figures`` maps a figure key to its path relative to the page."""
    notes = _lines(f"> note: {note}" for note in report.notes)
    page = _template("page.md").substitute(
        title=title,
        command=command or "s2ap report",
        date=_dt.date.today().isoformat(),
        studies=", ".join(f"`{s}`" for s in studies),
        n_runs=len(report.runs),
        setup=_lines(_setup_lines(report.runs)),
        notes=notes + "\n" if notes else "",
        **_claim_blocks(report.claims),
        arm_sections=_arm_sections(report.arm_cells, figures),
        sweep_section=_sweep_section(report.sweep_cells, figures),
        tracking_uris=", ".join(f"`{u}`" for u in tracking_uris),
        appendix_table=_lines(
            md_table(["study", "cell", "seed", "run id", "trial"], _appendix_rows(report))
        ),
    )
    return page.rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# Files


def _load(targets: Sequence[tuple[str, str]]) -> tuple[list[TrialRun], list[str], list[str]]:
    """(runs, notes, tracking URIs in first-seen order) of ``(study, tracking URI)`` pairs."""
    by_uri: dict[str, list[str]] = defaultdict(list)
    for name, uri in targets:
        by_uri[uri].append(name)
    runs: list[TrialRun] = []
    notes: list[str] = []
    for uri, names in by_uri.items():
        r, n = load_trial_runs(uri, names)
        runs += r
        notes += n
    if not runs:
        raise ReportError(
            f"no finished trial run in {', '.join(n for n, _ in targets)}; run the studies first"
        )
    return runs, notes, list(by_uri)


def _write_figures(report: Report, out_dir: Path, fig_dir: Path, dpi: int) -> dict[str, str]:
    """Save the figures that have data; return key -> path relative to the page's folder."""
    made: list[tuple[str, Any]] = []
    if report.arm_cells:
        made.append(("robust_vs_sparsity", figure_robust_vs_sparsity(report.arm_cells)))
        made.append(("hamming", figure_hamming(report.arm_cells)))
    if report.sweep_cells:
        made.append(("rho", figure_rho(report.sweep_cells, report.arm_cells)))
    figures = {}
    for key, fig in made:
        path = save_png(fig, fig_dir / f"{key}.png", dpi=dpi)
        figures[key] = os.path.relpath(path, out_dir)
    return figures


def write_report(
    targets: Sequence[tuple[str, str]],
    out: str | os.PathLike[str],
    *,
    figures_dir: str | os.PathLike[str] | None = None,
    dpi: int = 90,
    command: str | None = None,
) -> Report:
    """Read the runs of ``targets`` (``(study name, tracking URI)`` pairs), write the page at
    ``out`` and its PNG figures under ``figures_dir`` (default: ``<out folder>/figures``).

    Raises :class:`ReportError` when a study is missing or none has a finished trial.
    """
    runs, notes, uris = _load(targets)
    report = build_report(runs, notes)
    out_path = Path(out).absolute()
    fig_dir = Path(figures_dir).absolute() if figures_dir else out_path.parent / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = _write_figures(report, out_path.parent, fig_dir, dpi)
    text = render_markdown(
        report,
        studies=[n for n, _ in targets],
        tracking_uris=uris,
        figures=figures,
        command=command,
    )
    with atomic_writer(out_path) as fh:
        fh.write(text.encode("utf-8"))
    return report
