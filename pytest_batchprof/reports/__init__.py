"""Reports: the figures of a row and how they are shown (:mod:`.figures`), rows to tables
and markdown (:mod:`.tables`), seeds folded (:mod:`.seeds`, :mod:`.stats`) into the
summary table (:mod:`.summary`), studies across batch sizes (:mod:`.studies`,
:mod:`.lr_grid`, :mod:`.critical_batch`), plots (:mod:`.plots`) and files
(:mod:`.storage`). Rows are plain dicts: nothing here imports the engine. The session's
report that puts them together is :mod:`pytest_batchprof.plugin.report`."""
