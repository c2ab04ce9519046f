"""A results page that tests the paper's claims with the runs of finished studies (``s2ap report``).

Built from MLflow alone (:mod:`tracking.report.trials`): the finished trial runs of the named
studies, grouped into *cells* (one configuration without its seed). Each claim is judged per cell
with one rule (:mod:`tracking.report.stats`, :mod:`tracking.report.claims`), and the page
(:mod:`tracking.report.page`: tables, figures, a Markdown template) lists the run ids behind
every number.

    from tracking.report import write_report, ReportError
    report = write_report([("digits-arms", "sqlite:////abs/mlflow.db")], "docs/RESULTS.md")
"""

from tracking.report.claims import (
    CLAIMED_OVERHEAD,
    OVERHEAD_TOLERANCE,
    ClaimResult,
    judge_claims,
    prune_overhead,
)
from tracking.report.page import Report, build_report, render_markdown, repeat_check, write_report
from tracking.report.stats import (
    CANNOT_TELL,
    MIXED,
    REFUTES,
    SUPPORTS,
    MeanStd,
    Verdict,
    judge,
    mean_std,
    overall,
)
from tracking.report.trials import (
    ARMS,
    Cell,
    ReportError,
    TrialRun,
    group_cells,
    load_trial_runs,
    split_studies,
)

__all__ = [
    "ARMS",
    "CANNOT_TELL",
    "CLAIMED_OVERHEAD",
    "MIXED",
    "OVERHEAD_TOLERANCE",
    "REFUTES",
    "SUPPORTS",
    "Cell",
    "ClaimResult",
    "MeanStd",
    "Report",
    "ReportError",
    "TrialRun",
    "Verdict",
    "build_report",
    "group_cells",
    "judge",
    "judge_claims",
    "load_trial_runs",
    "mean_std",
    "overall",
    "prune_overhead",
    "render_markdown",
    "repeat_check",
    "split_studies",
    "write_report",
]
