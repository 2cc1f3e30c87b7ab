"""Data: the data sets' names (:mod:`.catalog`, importable without torch), what a model
factory may know of them (:mod:`.description`), and the sets themselves as in-memory
tensors, built in or registered by a project (:mod:`.datasets`)."""
