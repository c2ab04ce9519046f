"""The s2ap study service: Ray Tune Trainable, Optuna search, ASHA, the study file, the CLI.

Sub-packages by job, each importing only those listed before it (``tests/test_layers.py``):

- :mod:`tune.common`: console output, step timings, checked user inputs, tensor files read as
  data only, atomic JSON files;
- :mod:`tune.study`: the study file and its search space (Ray-free);
- :mod:`tune.trial`: a trial inside a Ray worker (the Trainable, its pipelines, checkpoints,
  MLflow writes, test evaluation), and ``s2ap run`` (one pipeline without Ray);
- :mod:`tune.results`: trial rows from Ray's record, the best trial, the comparison with the
  baselines, ``summary.json``, ``s2ap status``;
- :mod:`tune.cluster`: ``ray start`` command lines, node health, a one-box cluster, ``s2ap submit``;
- :mod:`tune.driver`: ``s2ap tune``: storage checks, Ray start, the dense model, Optuna's
  sampler and ASHA in a Tuner, the conclusion;
- :mod:`tune.cli`: the ``s2ap`` command line (one module per command).

Modules are imported on use, so ``import tune`` stays light. Not the ``tune`` package on PyPI
(an unrelated HPO library): the distribution is ``s2ap``.
"""
