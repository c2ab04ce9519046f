"""A study's results, read back: trial rows from Ray's record (as plain JSON), the best trial,
the comparison with the baselines, ``summary.json`` and ``s2ap status``.

- :mod:`tune.results.ray_record`: Ray Tune's ``experiment_state-*.json``, read without unpickling;
- :mod:`tune.results.trials`: one row per trial, the best trial, the Pareto front, counts;
- :mod:`tune.results.comparison`: the best S2AP trial beside each baseline;
- :mod:`tune.results.summary`: ``summary.json``, the printout, the study run's records;
- :mod:`tune.results.status`: ``s2ap status``.
"""
