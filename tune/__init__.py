"""The s2ap study service: Ray Tune Trainable, Optuna search, ASHA, the study file, the CLI.

Modules (imported on use, so ``import tune`` stays light), one job each:

The study file
- :mod:`tune.study`: the study file schema (:func:`tune.study.load_study`);
- :mod:`tune.search`: search space, Optuna searcher, ASHA scheduler.

The driver (``s2ap tune``), in the order a launch runs them
- :mod:`tune.service`: :func:`tune.service.run_study`, the steps of a launch;
- :mod:`tune.options`: the launch flags (:class:`tune.options.LaunchOptions`);
- :mod:`tune.storage`: new / resumed / overwritten study, ``study.json``;
- :mod:`tune.runtime`: start or join Ray, check that a trial fits a node;
- :mod:`tune.dense`: the dense model, pretrained once per study and cached;
- :mod:`tune.tuner`: the Tuner (new or restored) and its fit;
- :mod:`tune.results`: trial rows from Ray's record, the best trial, the Pareto front;
- :mod:`tune.reconcile`: Optuna and MLflow settled with Tune's record after a search;
- :mod:`tune.evaluation`: test-set evaluation of a trial's selected model;
- :mod:`tune.summary`: ``summary.json``, the printout, the study run's best-trial record;
- :mod:`tune.status`, :mod:`tune.submit`: ``s2ap status`` and ``s2ap submit``;
- :mod:`tune.console`: warnings and best-effort bookkeeping.

A trial (inside a Ray worker)
- :mod:`tune.trainable`: :class:`tune.trainable.S2APTrainable` (one Tune iteration = one epoch);
- :mod:`tune.context`: what the driver hands every trial (``config["s2ap"]``);
- :mod:`tune.device`: the trial's device (the GPU Ray assigned, or a loud failure);
- :mod:`tune.pipelines`: one pipeline per seed, per-process caches, merged records;
- :mod:`tune.recorder`: all of a trial's MLflow writes;
- :mod:`tune.checkpoint`: a trial's checkpoint folder.

Elsewhere
- :mod:`tune.run`: ``s2ap run``, one pipeline without Ray;
- :mod:`tune.cluster`: ``ray start`` command lines and a one-box cluster;
- :mod:`tune.cli`: the ``s2ap`` command line (one module per command).

Not the ``tune`` package on PyPI (an unrelated HPO library): the distribution is ``s2ap``.
"""
