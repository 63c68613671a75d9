"""Latent-variable models of population spiking, all with the :class:`LatentModel` surface.

``fit(recording)`` on training trials, ``transform`` -> latents ``(trial, time, latent)`` from
held-in neurons, ``predict`` -> rates ``(trial, time, neuron)`` in counts per bin, ``score`` ->
co-smoothing bits per spike on held-out neurons (see :mod:`analysis` for the data format).

- :class:`SmoothingModel`: Gaussian-smoothed held-in spikes + Poisson GLM (NLB baseline).
- :class:`FactorAnalysisModel`: factor analysis of smoothed sqrt counts.
- :class:`GPFA`: Gaussian-process factor analysis (Yu et al. 2009), batched EM in torch.
- :class:`PCLatentModel`: dynamical predictive coding with a Poisson observation energy
  (:mod:`pcsim.temporal`), latents relaxed per trial, weights learned by local rules.
- :class:`LFADS`: LFADS-style sequential VAE (Pandarinath et al. 2018): GRU encoder -> g0 ->
  GRU generator -> factors -> Poisson rates, coordinated dropout, forecasts by the generator.
- :class:`PiVAE`: pi-VAE (Zhou & Wei 2020), a VAE of each bin with a label-conditioned prior;
  :class:`PoissonVAE` its unconditioned ablation.
"""

from analysis.models.base import Inference, LatentModel, PoissonGLM, config_section
from analysis.models.fa import FactorAnalysisModel, factor_analysis
from analysis.models.gpfa import GPFA, gpfa_em, gpfa_posterior
from analysis.models.lfads import LFADS
from analysis.models.pc_latent import PCLatentModel
from analysis.models.pivae import PiVAE, PoissonVAE
from analysis.models.smoothing import SmoothingModel, smooth_counts

__all__ = ["Inference", "LatentModel", "PoissonGLM", "config_section", "SmoothingModel", "smooth_counts",
           "FactorAnalysisModel", "factor_analysis", "GPFA", "gpfa_em", "gpfa_posterior",
           "PCLatentModel", "LFADS", "PiVAE", "PoissonVAE"]
