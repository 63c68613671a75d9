"""Experiments of the ``circuits`` package: one module per config under ``configs/``."""
