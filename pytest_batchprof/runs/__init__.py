"""Runs: a fixture's arguments to a checked experiment (:mod:`.build`), the session's
trained runs (:mod:`.session`) and their live output (:mod:`.progress`), kept across
sessions (:mod:`.cache`), repeated over seeds (:mod:`.repeats`), the learning rate chosen
from a grid (:mod:`.lr_grid`) and the largest batch that fits (:mod:`.max_batch`)."""
