"""Experiments: a run's configuration and the roles of its settings (:mod:`.config`), the
models it trains (:mod:`.models`, :mod:`.code`) and what it learns and is scored by
(:mod:`.tasks`). A fixture's arguments become a checked configuration and recipe in
:mod:`pytest_batchprof.runs.build`, which tries them on the engine."""
