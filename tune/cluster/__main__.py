"""``python -m tune.cluster local|health`` (:func:`tune.cluster.nodes.main`)."""

from tune.cluster.nodes import main

raise SystemExit(main())
