"""Generative models set beside predictive coding's generative mode: one surface
(:mod:`pcsim.generative.base`), the same data and the same metrics for every model."""
