"""Exceptions raised at pcsim's boundaries.

Every error names where the problem is (file and key for configs, array and index for
data, step and layer for inference), so a user can fix the input without reading code.
"""


class PCSimError(Exception):
    """Base class of every error pcsim raises on purpose."""


class ConfigError(PCSimError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, out of range)."""


class DataError(PCSimError, ValueError):
    """Input data is malformed: NaN/Inf, wrong shape or dimension names, bad labels."""


class InferenceDivergenceError(PCSimError, RuntimeError):
    """Relaxation diverged: the energy became non-finite or grew past its bound.

    Attributes ``step`` (0-based inference step) and ``layer`` (index of the value-node
    layer whose prediction-error energy blew up first) say where it happened.
    """

    def __init__(self, message: str, step: int, layer: int):
        super().__init__(message)
        self.step = step
        self.layer = layer
