"""MLflow tracking for s2ap studies: runs, metrics, mask artifacts, plots, the best trial, the UI.

Imports torch, numpy, mlflow and matplotlib (and may import ``s2ap``); never ray or ``tune``.
Import the modules themselves (``from tracking.artifacts import save_masks``): importing this
package imports none of them, so ``tracking.artifacts`` (masks, ``s2ap run``) or
``tracking.client``'s URI checks never pay MLflow's import (~1 s).

Modules, each on one concept: :mod:`~tracking.client` (tracking URIs, clients, tag names),
:mod:`~tracking.outbox` (writes that survive an outage), :mod:`~tracking.writer` (writing to one
run), :mod:`~tracking.runs` (the study run) and :mod:`~tracking.trial` (a trial run),
:mod:`~tracking.params` (params, tags), :mod:`~tracking.artifacts` (mask and weight files),
:mod:`~tracking.plots` (figures), :mod:`~tracking.selection` and :mod:`~tracking.pull` (the best
trial, pulling its mask), :mod:`~tracking.registry` and :mod:`~tracking.pyfunc_model` (the best
trial's model in the Model Registry, ``models:/<study>@best``, and its code),
:mod:`~tracking.server` and :mod:`~tracking.ui` (the MLflow server, the UI on a study's trials),
:mod:`~tracking.report` (the results page).
"""
