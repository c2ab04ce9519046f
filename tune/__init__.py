"""The s2ap study service: Ray Tune Trainable, Optuna search, ASHA, the study file, the CLI.

Modules (imported on use, so ``import tune`` stays light):

- :mod:`tune.study`: the study file schema (:func:`tune.study.load_study`);
- :mod:`tune.search`: search space, Optuna searcher, ASHA scheduler;
- :mod:`tune.trainable`: :class:`tune.trainable.S2APTrainable` (one Tune iteration = one epoch);
- :mod:`tune.service`: launch / resume / submit / status of a study;
- :mod:`tune.cluster`: ``ray start`` command lines and a one-box cluster;
- :mod:`tune.cli`: the ``s2ap`` command line.

Not the ``tune`` package on PyPI (an unrelated HPO library): the distribution is ``s2ap``.
"""
