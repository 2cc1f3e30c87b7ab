"""The training engine: the loop (:mod:`.training`), what hangs on it (:mod:`.steps`), and
the device and floating-point settings it runs under (:mod:`.devices`, :mod:`.denormals`)."""
