"""Reports: the figures of a row and how they are shown (:mod:`.figures`), rows to tables
and markdown (:mod:`.tables`), plots (:mod:`.plots`), the session's report
(:mod:`.summary`), and its files (:mod:`.storage`)."""
