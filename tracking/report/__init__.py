"""A results page that tests the paper's claims with the runs of finished studies (``s2ap report``).

Built from MLflow alone (:mod:`tracking.report.trials`): the finished trial runs of the named
studies (from one or several stores), split by setting (data and model: one page section each,
:mod:`tracking.report.setting` says what each ran on) and grouped into *cells* (one
configuration without its seed). Each claim is judged per cell within a setting with one rule
(:mod:`tracking.report.stats`, :mod:`tracking.report.claims`), for every host (HYDRA, HARP), and
the page (:mod:`tracking.report.page`: tables, figures, Markdown templates) lists the run ids
behind every number.

    from tracking.report import write_report, ReportError
    report = write_report([("digits-arms", "sqlite:////abs/mlflow.db")], "docs/RESULTS.md")
"""

# Each module's ``__all__`` is its public part; the package re-exports them all.
from tracking.report import claims, page, setting, stats, trials
from tracking.report.claims import *  # noqa: F403
from tracking.report.page import *  # noqa: F403
from tracking.report.setting import *  # noqa: F403
from tracking.report.stats import *  # noqa: F403
from tracking.report.trials import *  # noqa: F403

__all__ = [*claims.__all__, *page.__all__, *setting.__all__, *stats.__all__, *trials.__all__]
