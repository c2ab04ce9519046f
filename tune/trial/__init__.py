"""A trial, inside a Ray worker (and ``s2ap run``, the same pipeline without Ray).

- :mod:`tune.trial.trainable`: :class:`~tune.trial.trainable.S2APTrainable` (one Tune iteration =
  one epoch);
- :mod:`tune.trial.context`: what the driver hands every trial (``config["s2ap"]``);
- :mod:`tune.trial.device`: the trial's device (the GPU Ray assigned, or a loud failure);
- :mod:`tune.trial.pipelines`: one pipeline per seed, per-process caches, merged records;
- :mod:`tune.trial.recorder`: all of a trial's MLflow writes;
- :mod:`tune.trial.checkpoint`: a trial's checkpoint folder;
- :mod:`tune.trial.evaluation`: test-set evaluation of a trial's selected model;
- :mod:`tune.trial.standalone`: ``s2ap run``, one pipeline in-process, written to a folder.

Imported on use: ``import tune.trial`` imports neither Ray nor torch.
"""
