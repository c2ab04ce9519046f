"""The study file and what it searches (Ray-free: validating a study never imports Ray).

- :mod:`tune.study.file`: :func:`load_study` reads and validates a study file into a
  :class:`Study` (paths resolved, nothing created);
- :mod:`tune.study.settings`: the ``study:`` block (trials, sampler, objectives, ASHA, resources,
  checkpoints, baselines);
- :mod:`tune.study.space`: the ``search_space:`` (distributions, arm branches, grids);
- :mod:`tune.study.baselines`: baselines and effective configurations (what makes two trials the
  same question).
"""

from tune.study.file import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "load_study"]
