"""Runs: the session's trained runs (:mod:`.session`), kept across sessions
(:mod:`.cache`), repeated over seeds and folded (:mod:`.repeats`, :mod:`.stats`), and runs
of a test's own loop (:mod:`.recording`)."""
