"""A Ray cluster for studies: ``ray start`` command lines, node health, a one-box cluster, and
``s2ap submit`` (a study as a Ray Job).

- :mod:`tune.cluster.nodes`: the ``ray start`` argv the recipes run, the health check, a
  loopback cluster (``python -m tune.cluster local|health``), the shared-storage warning;
- :mod:`tune.cluster.submit`: ``s2ap submit``.

The names of :mod:`tune.cluster.nodes` are importable from here (``tune.cluster.ray_head_command``
is what the Docker and KubeRay recipes and their tests refer to).
"""

from tune.cluster.nodes import *  # noqa: F403 (the recipes' public names; nodes.__all__)
from tune.cluster.nodes import __all__ as __all__
