"""Data: the data sets' names (:mod:`.catalog`, importable without torch) and the sets
themselves as in-memory tensors, built in or registered by a project (:mod:`.datasets`)."""
