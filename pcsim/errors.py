"""Exceptions raised at pcsim's boundaries: one hierarchy, rooted in :class:`PCSimError`.

A caller catches bad input of any kind with ``except PCSimError``; each class also subclasses
the builtin that existing callers would have caught (``ValueError`` for bad values, ``OSError``
for files and directories, ``RuntimeError`` for a run that blew up). Every error names where
the problem is (file and key for configs, array and index for data, step and layer for
inference, the directory for outputs), so a user can fix the input without reading code.

::

    PCSimError
    ├── ConfigError (ValueError)        a setting: config key, override or function argument
    ├── DataError (ValueError)          an array or recording: NaN/Inf, shape, labels, units
    │   └── FileFormatError (OSError)   a data or results file that cannot be read as what it claims to be
    ├── OutputError (OSError)           an output directory: exists, in use, not writable, full
    └── DivergenceError (RuntimeError)  a computation blew up
        ├── InferenceDivergenceError    the relaxation of value nodes (step, layer)
        ├── LearningDivergenceError     the weights under learning (epoch, batch)
        └── SimulationDivergenceError (FloatingPointError)  a circuit simulation
"""


class PCSimError(Exception):
    """Base class of every error pcsim raises on purpose."""


class ConfigError(PCSimError, ValueError):
    """A setting is invalid: a configuration file's key, a ``--set`` override or a public
    function's argument (unknown key, wrong type, out of range, not finite)."""


class DataError(PCSimError, ValueError):
    """Input data is malformed: NaN/Inf, wrong shape or dimension names, bad labels, spike
    times outside the trials."""


class FileFormatError(DataError, OSError):
    """A file that should hold a recording or pcsim results cannot be read as one (truncated,
    not HDF5/netCDF, or HDF5 without the NWB layout)."""


class OutputError(PCSimError, OSError):
    """An output directory cannot take this run: it holds another result (and ``--overwrite``
    was not given), another run is writing it, or it cannot be created or written."""


class DivergenceError(PCSimError, RuntimeError):
    """A computation blew up (non-finite or exploding values); subclasses say which."""


class InferenceDivergenceError(DivergenceError):
    """Relaxation diverged: the energy became non-finite or grew past its bound.

    Attributes ``step`` (0-based inference step) and ``layer`` (index of the value-node
    layer whose prediction-error energy blew up first) say where it happened.
    """

    def __init__(self, message: str, step: int, layer: int):
        super().__init__(message)
        self.step = step
        self.layer = layer


class LearningDivergenceError(DivergenceError):
    """Learning diverged: a parameter or the training energy became non-finite or exploded
    (typically the learning rate). ``epoch`` and ``batch`` (0-based, or None) say where."""

    def __init__(self, message: str, epoch: int | None = None, batch: int | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch


class SimulationDivergenceError(DivergenceError, FloatingPointError):
    """A circuit simulation produced non-finite or exploding rates or voltages."""
