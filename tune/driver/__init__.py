"""The driver of a study (``s2ap tune``), in the order a launch runs it.

- :mod:`tune.driver.launch`: :func:`~tune.driver.launch.run_study`, the steps of a launch;
- :mod:`tune.driver.options`: the launch flags;
- :mod:`tune.driver.storage`: new / resumed / overwritten study, ``study.json``;
- :mod:`tune.driver.ray_runtime`: start or join Ray, check that a trial fits a node;
- :mod:`tune.driver.warmup`: MLflow's imports and a new store, while Ray starts;
- :mod:`tune.driver.dense`: the dense model, pretrained once per study and cached;
- :mod:`tune.driver.searcher`: Optuna's sampler in Ray Tune, baselines first, each effective
  configuration once;
- :mod:`tune.driver.scheduler`: ASHA (baselines never stopped);
- :mod:`tune.driver.tuner`: the Tuner (new or restored) and its fit;
- :mod:`tune.driver.progress`: the console while a study runs (a line per trial event, a
  progress line; Ray's reporter only with ``-v 2``);
- :mod:`tune.driver.reconcile`: Optuna and MLflow settled with Tune's record after a search;
- :mod:`tune.driver.best_model`: the best trial's model registered as ``models:/<study>@best``.
"""
