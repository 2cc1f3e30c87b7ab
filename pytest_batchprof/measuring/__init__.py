"""Measuring a trained model: parameters, FLOPs, sizes, latency and memory
(:mod:`.metrics`), energy and CO2eq (:mod:`.carbon`), and the gradient noise scale
(:mod:`.noise_scale`)."""
