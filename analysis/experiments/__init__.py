"""Experiments of the analysis package; each module defines ``Config``, ``run`` and ``plot``."""
