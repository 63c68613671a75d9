"""Experiments shipped with pcsim's engine; each module defines ``Config``, ``run`` and ``plot``."""
