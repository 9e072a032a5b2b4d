"""Per-layer policy search (``python -m prunelab.search``): the space of per-layer ratios of a
trained run (:mod:`.space`), trials as ordinary ``train`` runs (:mod:`.trials`), the Optuna study
on a shared storage (:mod:`.study`), the latency objective timed in the runtime (:mod:`.latency`), the front
and its files (:mod:`.front`, :mod:`.report`), the whole search (:mod:`.engine`)."""
