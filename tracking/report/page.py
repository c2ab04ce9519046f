"""The results page: the report (sections of cells, claims, notes), its Markdown and its files.

The runs are split by setting (data and model, :attr:`TrialRun.setting`) into sections, in the
order the studies were named; each section has its own setup lines, claims, tables and figures,
and claims never pair runs of two settings. The page's prose lives in the templates beside this
module (``templates/page.md``, ``section.md``, ``arms.md``, ``sweep.md``, filled with
:class:`string.Template`); this module computes the blocks that go into them (tables, figure
links, notes). A block is either empty or whole lines, each ending in a newline; a section ends
with one blank line, the page with one newline.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import importlib.resources
import math
import os
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tracking.artifacts import atomic_writer
from tracking.plots import save_png
from tracking.report.claims import ClaimResult, judge_claims, sweep_metric
from tracking.report.figures import figure_hamming, figure_rho, figure_robust_vs_sparsity
from tracking.report.setting import SettingInfo, describe_setting
from tracking.report.stats import CANNOT_TELL, REFUTES, SUPPORTS, mean_std
from tracking.report.tables import (
    LANDSCAPE_HEADER,
    TIME_HEADER,
    accuracy_header,
    accuracy_table,
    hamming_table,
    has_test_numbers,
    landscape_table,
    md_table,
    sweep_table,
    time_table,
)
from tracking.report.trials import (
    TEST_METRICS,
    Cell,
    ReportError,
    StudyInfo,
    TrialRun,
    group_cells,
    load_studies,
    load_trial_runs,
    share_warmups,
    split_studies,
    values,
)

__all__ = [
    "Report",
    "Section",
    "build_report",
    "render_markdown",
    "repeat_check",
    "write_report",
]

_VERDICT_MARK = {SUPPORTS: "**supports**", REFUTES: "**refutes**", CANNOT_TELL: "cannot tell"}
#: Figure key -> its alt text on the page.
FIGURE_ALT = {
    "robust_vs_sparsity": "AutoAttack accuracy vs sparsity",
    "hamming": "Hamming distance per prune epoch",
    "rho": "accuracy vs rho",
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
class Section:
    """The runs of one setting (data and model) and everything computed from them."""

    setting: tuple[str, str, str]
    info: SettingInfo
    runs: list[TrialRun]
    arm_cells: dict[Cell, list[TrialRun]]
    sweep_cells: dict[Cell, list[TrialRun]]
    claims: list[ClaimResult]
    notes: list[str]
    studies: list[StudyInfo] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    """Everything the page shows, computed (what the tests check)."""

    runs: list[TrialRun]
    sections: list[Section]
    notes: list[str]

    @property
    def claims(self) -> list[ClaimResult]:
        """Every section's claims, in page order."""
        return [c for s in self.sections for c in s.claims]


def _section(
    runs: list[TrialRun],
    studies: Mapping[str, StudyInfo],
    labels: Mapping[str, str],
    machines: Mapping[str, str],
) -> Section:
    names = list(dict.fromkeys(r.study for r in runs))
    infos = [studies.get(n) or StudyInfo(n) for n in names]
    info = describe_setting(runs, infos, labels=labels, machines=machines)
    arm_runs, sweep_runs = split_studies(runs)
    arm_cells = group_cells(arm_runs)
    sweep_cells = group_cells(sweep_runs)
    claims = judge_claims(arm_cells, sweep_cells)
    return Section(runs[0].setting, info, runs, arm_cells, sweep_cells, claims, repeat_check(runs))


def build_report(
    runs: Sequence[TrialRun],
    notes: Sequence[str] = (),
    *,
    studies: Mapping[str, StudyInfo] | None = None,
    labels: Mapping[str, str] | None = None,
    machines: Mapping[str, str] | None = None,
) -> Report:
    """Split the runs by setting, group each setting's runs into cells and judge every claim
    within it (no I/O). Sections come in the order of the runs' settings' first appearance.
    Runs that log no warm-up (HYDRA) are measured after the warm-up of the runs they are
    compared with (:func:`~tracking.report.trials.share_warmups`). ``studies`` (the study
    runs), ``labels`` and ``machines`` (study name -> text, from the command line) feed the
    sections' setup lines."""
    runs = share_warmups(runs)
    by_setting: dict[tuple[str, str, str], list[TrialRun]] = defaultdict(list)
    for r in runs:
        by_setting[r.setting].append(r)
    sections = [
        _section(rs, studies or {}, labels or {}, machines or {}) for rs in by_setting.values()
    ]
    return Report(list(runs), sections, list(notes))


def _comparable(r: TrialRun) -> dict[str, float]:
    """What two repeats of a run must agree on: the test numbers of a full trial, the last
    prune epoch's validation accuracy of a prune-only one."""
    if r.prune_only:
        return {"val_robust_acc (last prune epoch)": r.last_prune("val_robust_acc")}
    return {key: r.metrics.get(key, float("nan")) for key in TEST_METRICS}


def repeat_check(runs: Sequence[TrialRun]) -> list[str]:
    """Notes on configurations (cell and seed) that ran in more than one study: same dense
    model, same seed, so their numbers should agree; say how far apart they are. Only like is
    paired with like (a prune-only trial is no repeat of a full one: it has no test numbers)."""
    groups: dict[tuple[Any, ...], list[TrialRun]] = defaultdict(list)
    for r in runs:
        groups[(r.setting, r.cell, r.seed, r.prune_only)].append(r)
    repeats = [rs for rs in groups.values() if len({r.study for r in rs}) > 1]
    gaps = []
    for rs in repeats:
        numbers = [_comparable(r) for r in rs]
        for key in numbers[0]:
            vals = [n.get(key, float("nan")) for n in numbers]
            if all(math.isfinite(v) for v in vals):
                gaps.append(max(vals) - min(vals))
    if not gaps:
        return []
    studies = sorted({r.study for rs in repeats for r in rs})
    worst = max(gaps)
    return [
        f"repeat check: {len(repeats)} configuration(s) ran in several studies "
        f"({', '.join(studies)}) with the same seed (each counts once in its cell, from the "
        f"first study named); the largest difference of an accuracy between the repeats is "
        f"{worst * 100:.2f} points"
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


def _figure_link(figures: Mapping[str, str], key: str) -> str:
    return f"![{FIGURE_ALT[key.rsplit('/', 1)[-1]]}]({figures[key]})\n\n" if key in figures else ""


def _setup_lines(runs: Sequence[TrialRun]) -> list[str]:
    if not runs:
        return []
    parts = []
    for label, key in SETUP_PARAMS.items():
        # A run logs only the params its arm reads (HYDRA: no warm-up): show the logged ones;
        # a param no run logs (AWP gamma without AWP) is left out.
        vals = sorted({r.params[key] for r in runs if key in r.params})
        if vals:
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
    if not claims:
        none = (
            "No claim can be judged on these runs: that needs a study with more than one arm, "
            "or S2AP at more than one radius."
        )
        return {"claims_table": _lines([none]), "claims_detail": ""}
    mark = [_VERDICT_MARK.get(c.verdict, c.verdict) for c in claims]
    table = md_table(["claim", "verdict"], [[c.claim, m] for c, m in zip(claims, mark)])
    detail = []
    for c, m in zip(claims, mark):
        detail.append(f"- **{c.claim}** — {m}")
        detail += [f"  - {d}" for d in c.detail]
    return {"claims_table": _lines(table), "claims_detail": _lines(detail)}


def _arm_sections(
    cells: Mapping[Cell, list[TrialRun]], figures: Mapping[str, str], slug: str
) -> str:
    if not cells:
        return ""
    header, rows = hamming_table(cells)
    return _section_text(
        "arms.md",
        accuracy_table=_lines(md_table(accuracy_header(cells), accuracy_table(cells))),
        robust_vs_sparsity_figure=_figure_link(figures, f"{slug}/robust_vs_sparsity"),
        hamming_table=_lines(md_table(header, rows)),
        hamming_figure=_figure_link(figures, f"{slug}/hamming"),
        landscape_table=_lines(md_table(LANDSCAPE_HEADER, landscape_table(cells))),
        time_table=_lines(md_table(TIME_HEADER, time_table(cells))),
    )


def _sweep_choice(cells: Mapping[Cell, list[TrialRun]], studies: Sequence[StudyInfo]) -> str:
    """Which radius the sweep's numbers favour (the best mean), and which one its study picked
    on its own objective (the study run's ``s2ap.best_trial_id``), when that differs."""
    fn, name = sweep_metric(cells)
    c, rs = max(cells.items(), key=lambda kv: mean_std(values(kv[1], fn)).mean)
    m = mean_std(values(rs, fn))
    if not m.n:
        return f"No {name} in these runs."
    text = f"Best mean {name}: {c.method()}, {m.fmt(100)} ({len(rs)} seed(s))."
    by_trial = {(r.study, r.trial_id): cell for cell, runs in cells.items() for r in runs}
    for s in studies:
        picked = by_trial.get((s.name, s.tags.get("s2ap.best_trial_id", "")))
        if picked is not None:
            objective = s.tags.get("s2ap.objective.metric", "its objective")
            text += f" Study `{s.name}` picked {picked.method()} (on {objective})."
    return text


def _sweep_section(
    cells: Mapping[Cell, list[TrialRun]],
    figures: Mapping[str, str],
    slug: str,
    studies: Sequence[StudyInfo] = (),
) -> str:
    if not cells:
        return ""
    first = next(iter(cells))
    test = has_test_numbers(cells)
    header, rows = sweep_table(cells)
    scope = (
        "each trial finetuned and evaluated on the test split"
        if test
        else "prune-only trials (no finetuning, no test evaluation): rho is chosen on the "
        "validation robust accuracy at the end of pruning"
    )
    return _section_text(
        "sweep.md",
        arms=", ".join(sorted({c.arm for c in cells})),
        sparsity=f"{first.sparsity:g}",
        finetune=first.finetune,
        scope=scope,
        choice=_sweep_choice(cells, studies),
        sweep_table=_lines(md_table(header, rows)),
        rho_figure=_figure_link(figures, f"{slug}/rho"),
    )


def _section_text(name: str, **blocks: str) -> str:
    return _template(name).substitute(blocks).rstrip("\n") + "\n\n"


def _setting_section(section: Section, figures: Mapping[str, str]) -> str:
    notes = _lines(f"> note: {note}" for note in section.notes)
    return _section_text(
        "section.md",
        heading=section.info.title,
        setup=_lines(f"- {line}" for line in section.info.lines),
        params=_lines(_setup_lines(section.runs)),
        notes=notes + "\n" if notes else "",
        **_claim_blocks(section.claims),
        arm_sections=_arm_sections(section.arm_cells, figures, section.info.slug),
        sweep_section=_sweep_section(
            section.sweep_cells, figures, section.info.slug, section.studies
        ),
    )


def _appendix_rows(report: Report) -> list[list[str]]:
    """Every run once: each cell's runs, then the runs no cell counts (a repeated seed, a
    study with one arm), marked so: section, study, cell, seed, run id, trial."""
    rows = []
    seen: set[str] = set()
    for section in report.sections:
        in_cells = [
            (c.label(), r)
            for cells in (section.arm_cells, section.sweep_cells)
            for c, rs in cells.items()
            for r in rs
        ]
        others = [(f"{r.cell.label()} (not counted)", r) for r in section.runs]
        for label, r in in_cells + others:
            if r.run_id not in seen:
                seen.add(r.run_id)
                row = [section.info.title, r.study, label, str(r.seed), f"`{r.run_id}`"]
                rows.append([*row, r.trial_id])
    return rows


def _shown_uri(uri: str) -> str:
    """A sqlite store under the working directory as a relative path (the page names no
    folder outside the repository it is written from)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :])
        try:
            return f"{prefix}{path.relative_to(Path.cwd())}"
        except ValueError:
            return uri
    return uri


def render_markdown(
    report: Report,
    *,
    studies: Sequence[str],
    tracking_uris: Sequence[str],
    figures: Mapping[str, str],
    command: str | None = None,
    title: str = "Results: do the paper's claims hold here?",
) -> str:
    """The page as Markdown; ``figures`` maps ``<section slug>/<figure key>`` to its path
    relative to the page."""
    notes = _lines(f"> note: {note}" for note in report.notes)
    contents = _lines(
        f"- [{s.info.title}](#{_anchor(s.info.title)}): {len({r.study for r in s.runs})} "
        f"study(ies), {len(s.runs)} finished trials"
        for s in report.sections
    )
    page = _template("page.md").substitute(
        title=title,
        command=command or "s2ap report",
        date=_dt.date.today().isoformat(),
        studies=", ".join(f"`{s}`" for s in studies),
        n_runs=len(report.runs),
        contents=contents,
        notes=notes + "\n" if notes else "",
        sections="".join(_setting_section(s, figures) for s in report.sections),
        tracking_uris=", ".join(f"`{_shown_uri(u)}`" for u in tracking_uris),
        appendix_table=_lines(
            md_table(
                ["section", "study", "cell", "seed", "run id", "trial"], _appendix_rows(report)
            )
        ),
    )
    return page.rstrip("\n") + "\n"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# --------------------------------------------------------------------------------------------
# Files


def _load(
    targets: Sequence[tuple[str, str]],
) -> tuple[list[TrialRun], list[str], list[str], dict[str, StudyInfo]]:
    """(runs in the order the studies are named, notes, tracking URIs in first-seen order,
    study runs by name) of ``(study, tracking URI)`` pairs; the studies may live in several
    stores."""
    by_uri: dict[str, list[str]] = defaultdict(list)
    for name, uri in targets:
        by_uri[uri].append(name)
    runs: list[TrialRun] = []
    notes: list[str] = []
    studies: dict[str, StudyInfo] = {}
    for uri, names in by_uri.items():
        r, n = load_trial_runs(uri, names)
        runs += r
        notes += n
        studies.update(load_studies(uri, names))
    if not runs:
        raise ReportError(
            f"no finished trial run in {', '.join(n for n, _ in targets)}; run the studies first"
        )
    order = {name: i for i, (name, _) in enumerate(targets)}
    runs.sort(key=lambda r: order.get(r.study, len(order)))  # stable: trial order kept
    return runs, notes, list(by_uri), studies


def _write_figures(report: Report, out_dir: Path, fig_dir: Path, dpi: int) -> dict[str, str]:
    """Save each section's figures that have data (``<slug>-<key>.png``); return
    ``<slug>/<key>`` -> path relative to the page's folder."""
    made: list[tuple[str, Any]] = []
    for section in report.sections:
        slug, arms, sweep = section.info.slug, section.arm_cells, section.sweep_cells
        if arms:
            made.append((f"{slug}/robust_vs_sparsity", figure_robust_vs_sparsity(arms)))
            made.append((f"{slug}/hamming", figure_hamming(arms)))
        if sweep:
            made.append((f"{slug}/rho", figure_rho(sweep, arms)))
    figures = {}
    for key, fig in made:
        path = save_png(fig, fig_dir / f"{key.replace('/', '-')}.png", dpi=dpi)
        figures[key] = os.path.relpath(path, out_dir)
    return figures


def write_report(
    targets: Sequence[tuple[str, str]],
    out: str | os.PathLike[str],
    *,
    figures_dir: str | os.PathLike[str] | None = None,
    dpi: int = 90,
    command: str | None = None,
    labels: Mapping[str, str] | None = None,
    machines: Mapping[str, str] | None = None,
) -> Report:
    """Read the runs of ``targets`` (``(study name, tracking URI)`` pairs, in page order; the
    URIs may differ), write the page at ``out`` and its PNG figures under ``figures_dir``
    (default: ``<out folder>/figures``). ``labels`` and ``machines`` (study name -> text) name
    a study's setting and the machine it ran on (see :mod:`tracking.report.setting`).

    Raises :class:`ReportError` when a study is missing or none has a finished trial.
    """
    runs, notes, uris, studies = _load(targets)
    report = build_report(runs, notes, studies=studies, labels=labels, machines=machines)
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
