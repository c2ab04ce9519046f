"""The page's tables, as rows of strings (and Markdown), from the cells."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from tracking.report.stats import MeanStd, mean_std
from tracking.report.trials import (
    ARM_ORDER,
    TEST_METRICS,
    Cells,
    TrialRun,
    control_label,
    metric,
    per_prune_epoch,
    prune_cells,
    values,
)

__all__ = [
    "ACCURACY_HEADER",
    "LANDSCAPE_HEADER",
    "SWEEP_HEADER",
    "TIME_HEADER",
    "accuracy_header",
    "accuracy_table",
    "hamming_table",
    "has_test_numbers",
    "landscape_table",
    "md_table",
    "sweep_table",
    "time_table",
]


# Column headers, beside the functions that make the rows.
ACCURACY_HEADER = ("finetune", "sparsity", "arm", "seeds", "clean", "PGD", "AutoAttack")
_LANDSCAPE_NUMBERS = (
    "Hamming after warm-up (%)",
    "Hamming, last epoch (%)",
    "sharpness",
    "Hessian top eig",
)
LANDSCAPE_HEADER = ("sparsity", "arm", "seeds", *_LANDSCAPE_NUMBERS)
TIME_HEADER = (
    "sparsity",
    "arm",
    "runs",
    "s/epoch, all (mean)",
    "s/epoch, after warm-up (median)",
    "ratio to its host (HYDRA, HARP)",
)
#: The sweep table's columns; the test ones only when the sweep's trials have test numbers.
SWEEP_HEADER = (
    "rho",
    "ascent steps",
    "seeds",
    "val robust, last prune epoch",
    "clean",
    "PGD",
    "AutoAttack",
    "Hamming after warm-up (%)",
    "sharpness",
    "Hessian top eig",
)


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt_small(m: MeanStd) -> str:
    """Three significant digits (two for the spread): small numbers like sharpness."""
    if m.n == 0 or not math.isfinite(m.mean):
        return "–"
    if m.n == 1:
        return f"{m.mean:#.3g}"
    return f"{m.mean:#.3g} ± {m.std:#.2g}"


def accuracy_header(cells: Cells) -> list[str]:
    """:data:`ACCURACY_HEADER` with the test attack and the image counts when the runs agree on
    them: ``clean (10,000)``, ``PGD-20 (10,000)``, ``AutoAttack (1,000)``."""
    runs = [r for rs in cells.values() for r in rs if "test_clean_acc" in r.metrics]

    def one(values: set[str | None]) -> str | None:
        """The value all runs agree on, else ``None``."""
        return values.pop() if len(values) == 1 else None

    n = one({f"{r.metrics['test_examples']:,.0f}" for r in runs if "test_examples" in r.metrics})
    steps = one({r.params.get("evaluate.pgd_steps") for r in runs})
    aa = one({r.params.get("evaluate.autoattack_examples") for r in runs})
    count = f" ({n})" if n else ""
    clean = f"clean{count}"
    pgd = (f"PGD-{steps}" if steps else "PGD") + count
    auto = f"AutoAttack ({int(aa):,})" if aa and aa.isdigit() else "AutoAttack"
    return [*ACCURACY_HEADER[:4], clean, pgd, auto]


def accuracy_table(cells: Cells) -> list[list[str]]:
    """Rows: finetune, sparsity, arm (+radius), seeds, clean, PGD, AutoAttack (percent)."""
    rows = []
    for c, rs in cells.items():
        rows.append(
            [
                c.finetune,
                f"{c.sparsity:g}",
                c.method(),
                str(len(rs)),
                *[mean_std(values(rs, metric(k))).fmt(100) for k in TEST_METRICS],
            ]
        )
    return rows


def hamming_table(cells: Cells) -> tuple[list[str], list[list[str]]]:
    """Mean (over seeds) Hamming distance in percent of the masked weights, per prune epoch."""
    by_cell = prune_cells(cells)
    n_epochs = max(
        (len(r.prune_series("mask_hamming")) for rs in by_cell.values() for r in rs), default=0
    )
    header = ["sparsity", "arm", *[f"ep {i + 1}" for i in range(n_epochs)]]
    rows = []
    for c, rs in by_cell.items():
        means = per_prune_epoch(rs, "mask_hamming", n_epochs)
        rows.append(
            [
                f"{c.sparsity:g}",
                c.method(),
                *[f"{m.mean * 100:.3g}" if m.n else "–" for m in means],
            ]
        )
    return header, rows


def _landscape_numbers(rs: list[TrialRun]) -> list[str]:
    return [
        fmt_small(mean_std(r.mean_post_warmup("mask_hamming") * 100 for r in rs)),
        fmt_small(mean_std(r.last_prune("mask_hamming") * 100 for r in rs)),
        fmt_small(mean_std(r.last_prune("sharpness") for r in rs)),
        fmt_small(mean_std(values(rs, metric("hessian_top_eig")))),
    ]


def landscape_table(cells: Cells) -> list[list[str]]:
    """Rows: sparsity, arm, mean Hamming after warm-up, sharpness and Hessian at prune end."""
    return [
        [f"{c.sparsity:g}", c.method(), str(len(rs)), *_landscape_numbers(rs)]
        for c, rs in prune_cells(cells).items()
    ]


def _time_row(sparsity: float, arm: str, rs: list[TrialRun], host: MeanStd) -> list[str]:
    post = mean_std(r.prune_seconds() for r in rs)
    every = mean_std(
        statistics.fmean(r.prune_series("epoch_time_s"))
        for r in rs
        if r.prune_series("epoch_time_s")
    )
    ratio = (
        f"{post.mean / host.mean:.2f}"
        if host.n and math.isfinite(host.mean) and host.mean > 0
        else "–"
    )
    return [f"{sparsity:g}", arm, str(post.n), every.fmt(digits=2), post.fmt(digits=2), ratio]


def time_table(cells: Cells) -> list[list[str]]:
    """Rows: sparsity, arm, prune-epoch seconds (all epochs / after warm-up), ratio to the
    arm's plain host update (S2AP and random to HYDRA, HARP+S2AP to HARP)."""
    rows = []
    by_sp: dict[float, dict[str, list[TrialRun]]] = defaultdict(lambda: defaultdict(list))
    for c, rs in cells.items():
        by_sp[c.sparsity][c.arm].extend(rs)
    for sp, arms in sorted(by_sp.items()):
        for arm in sorted(arms, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99):
            host = mean_std(r.prune_seconds() for r in arms.get(control_label(arm), []))
            rows.append(_time_row(sp, arm, arms[arm], host))
    return rows


def has_test_numbers(cells: Cells) -> bool:
    """Whether any run of ``cells`` has test numbers (a prune-only sweep has none)."""
    return any(k in r.metrics for rs in cells.values() for r in rs for k in TEST_METRICS)


def sweep_table(sweep: Cells) -> tuple[list[str], list[list[str]]]:
    """Header and rows: rho, ascent steps, seeds, the validation robust accuracy at the last
    prune epoch (what a prune-only sweep chooses rho on), the test accuracies when the trials
    have them, Hamming after warm-up, sharpness and Hessian (an arm column when the sweep has
    several arms)."""
    test = has_test_numbers(sweep)
    arms = sorted({c.arm for c in sweep})
    header = [h for h in SWEEP_HEADER if test or h not in TEST_METRICS.values()]
    if len(arms) > 1:
        header.insert(0, "arm")
    rows = []
    key = lambda kv: (kv[0].arm, kv[0].ascent_steps or 0, kv[0].rho or 0)  # noqa: E731
    for c, rs in sorted(sweep.items(), key=key):
        landscape = _landscape_numbers(rs)
        tests = [mean_std(values(rs, metric(k))).fmt(100) for k in TEST_METRICS] if test else []
        row = [
            f"{c.rho:g}",
            str(c.ascent_steps),
            str(len(rs)),
            mean_std(r.last_prune("val_robust_acc") for r in rs).fmt(100),
            *tests,
            landscape[0],
            *landscape[2:],
        ]
        rows.append([c.arm, *row] if len(arms) > 1 else row)
    return header, rows
