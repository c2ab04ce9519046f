"""A results page that tests the paper's claims with the runs of finished studies (``s2ap report``).

Built from MLflow alone (:mod:`tracking.report.trials`): the finished trial runs of the named
studies, grouped into *cells* (one configuration without its seed). Each claim is judged per cell
with one rule (:mod:`tracking.report.stats`, :mod:`tracking.report.claims`), and the page
(:mod:`tracking.report.page`: tables, figures, a Markdown template) lists the run ids behind
every number.

    from tracking.report import write_report, ReportError
    report = write_report([("digits-arms", "sqlite:////abs/mlflow.db")], "docs/RESULTS.md")
"""

# Each module's ``__all__`` is its public part; the package re-exports them all.
from tracking.report import claims, page, stats, trials
from tracking.report.claims import *  # noqa: F403
from tracking.report.page import *  # noqa: F403
from tracking.report.stats import *  # noqa: F403
from tracking.report.trials import *  # noqa: F403

__all__ = [*claims.__all__, *page.__all__, *stats.__all__, *trials.__all__]
