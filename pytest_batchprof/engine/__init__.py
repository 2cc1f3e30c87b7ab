"""The training engine: the loop (:mod:`.training`), what hangs on it (:mod:`.steps`),
runs trained as one stacked ensemble (:mod:`.ensemble`) or data-parallel (:mod:`.parallel`,
:mod:`.launch`), out of memory as a result (:mod:`.memory`), and what a run reports and
holds (:mod:`.status`, :mod:`.lr_choice`). The device and floating-point settings it runs
under are :mod:`pytest_batchprof.hardware`'s."""
