"""pcsim: a predictive-coding simulator for neuroscience.

Hierarchical predictive-coding networks trained with local rules and with backprop side
by side, cortical circuits built on them, and latent models fitted to recordings. The
engine lives here; ``circuits`` and ``analysis`` build on it. Importing this package is
cheap: submodules (``pcsim.network``, ``pcsim.inference`` ...) load torch on demand.
"""

__version__ = "0.1.0"
