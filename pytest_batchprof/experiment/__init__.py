"""Experiments: a run's configuration and the roles of its settings (:mod:`.config`), the
models it trains (:mod:`.models`), and the step from a fixture's arguments to a checked
configuration and recipe (:mod:`.build`)."""
