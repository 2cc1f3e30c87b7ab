"""The machine a run computes on: which device (:mod:`.devices`), the clock that times its
work (:mod:`.clock`), its numeric precision (:mod:`.precision`) and the CPU's denormals
(:mod:`.denormals`). The engine trains under them and the measurements time with them;
nothing here imports the rest of the package but its settings."""
