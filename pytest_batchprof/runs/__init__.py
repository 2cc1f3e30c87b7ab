"""Runs: the session's trained runs (:mod:`.session`), kept across sessions
(:mod:`.cache`), repeated over seeds and folded (:mod:`.repeats`, :mod:`.stats`), runs
of a test's own loop (:mod:`.recording`), and the critical batch size fitted to a study's
steps to target (:mod:`.critical_batch`)."""
