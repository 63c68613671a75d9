"""The surface every latent model in :mod:`analysis.models` shares, and the pieces they share.

:class:`LatentModel` is a scikit-learn estimator (:class:`sklearn.base.BaseEstimator`:
hyper-parameters stored verbatim by ``__init__``, checked in ``fit`` against the class's
``_parameter_constraints``; ``get_params``, ``set_params`` and ``sklearn.base.clone`` work;
learned state ends in ``_``) with xarray in and out. A recording is validated once into an
:class:`analysis.recording.Recording` (a Recording passed in is not checked again), and the
numerics of a subclass see plain arrays and the ``observed`` mask:

- ``_fit_latents(counts, observed, heldin, bin_width)``: learn whatever maps held-in activity
  to latents, leaving unobserved bins out;
- ``_infer(counts_heldin, observed_heldin)``: the latent state of some trials from their
  held-in neurons (any object), from which ``_latents`` (``(trial, time, latent)``),
  ``_own_rates`` (rates of a model with its own readout) and ``_forecast`` (rates of the bins
  after the window; models that cannot forecast keep the base method, which says so) derive.

:meth:`LatentModel.infer` infers once and derives latents, rates and forecasts from that one
inference (:class:`Inference`); ``transform``, ``predict``, ``forecast`` and ``score`` are
views of it. The readout from latents to every neuron's rate is shared: the Poisson GLM of
:mod:`analysis.glm`, as in the co-smoothing baselines of the Neural Latents Benchmark (Pei
et al. 2021). :func:`config_section` turns a model's constructor into its config section.
"""

from __future__ import annotations

import dataclasses
import inspect
import time as _time
import typing
from functools import cache, cached_property
from typing import Any, Literal

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions

from analysis.glm import PoissonGLM
from analysis.metrics import co_bps
from analysis.recording import DIMS, Recording, as_recording
from pcsim import parallel
from pcsim.errors import ConfigError, DataError
from pcsim.arguments import check_number

__all__ = ["Inference", "LatentModel", "PoissonGLM", "Recording", "as_recording", "config_section"]


#: the floor of :func:`observed_mean_counts`, counts per bin: a neuron silent in every observed bin
#: starts at a small rate, not at ``log 0``
MEAN_COUNT_FLOOR = 1e-3


def observed_mean(x: np.ndarray) -> np.ndarray:
    """Mean over trials and bins ``(k,)`` of ``x`` ``(trial, time, k)``, NaN (unobserved) left out
    (0 where every bin is NaN)."""
    n = (~np.isnan(x)).sum((0, 1))
    return np.where(n > 0, np.nansum(x, (0, 1)) / np.maximum(n, 1), 0.0)


def observed_mean_counts(counts: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Each neuron's mean count per bin over its observed bins, ``(neuron,)`` (counts per bin), from
    counts and the 0/1 ``observed`` mask ``(trial, time, neuron)`` (:func:`observed_mean`), floored at
    :data:`MEAN_COUNT_FLOOR`: the rate every model's readout starts from (its log is the initial
    log-rate bias)."""
    return np.maximum(observed_mean(np.where(observed > 0, counts, np.nan)), MEAN_COUNT_FLOOR)


class Inference:
    """One inference of a fitted model on some trials; latents, rates and forecasts derive from it.

    ``latents``: DataArray ``(trial, time, latent)``; ``rates``: DataArray ``(trial, time,
    neuron)`` in counts per bin for every neuron, from held-in neurons only;
    ``forecast(n_forward)``: DataArray ``(trial, time, neuron)`` of the ``n_forward`` bins after
    the window (``time`` continues the bin centres, s). Each is computed once, on first use.
    ``recording`` is the validated :class:`~analysis.recording.Recording` it was inferred on.
    """

    def __init__(self, model: "LatentModel", recording: Recording, state: Any):
        self.model = model
        self.recording = recording
        self.state = state
        self._forecasts: dict[int, xr.DataArray] = {}

    @cached_property
    def latents(self) -> xr.DataArray:
        """Latents ``(trial, time, latent)`` of every trial."""
        z = self.model._latents(self.state)
        ds = self.recording.dataset
        coords = {k: v for k, v in ds["counts"].coords.items() if "neuron" not in v.dims}
        return xr.DataArray(z, dims=("trial", "time", "latent"), coords={**coords, "latent": np.arange(z.shape[2])},
                            name="latents", attrs={"model": type(self.model).__name__})

    @cached_property
    def rates(self) -> xr.DataArray:
        """Rates ``(trial, time, neuron)`` in counts per bin of every neuron."""
        m = self.model
        if m._uses_glm_readout():
            feats = m._readout_features(self.latents.values)
            rates = m.readout_.predict(feats.reshape(-1, feats.shape[-1])).reshape(feats.shape[:2] + (m.n_neurons_,))
        else:
            rates = m._own_rates(self.state)
        return xr.DataArray(rates, dims=DIMS, coords=self.recording.dataset["counts"].coords, name="rates",
                            attrs={"units": "counts/bin", "long_name": "predicted firing rate", "model": type(m).__name__})

    def forecast(self, n_forward: int) -> xr.DataArray:
        """Rates ``(trial, time, neuron)`` in counts per bin of the ``n_forward`` bins after the window."""
        n_forward = check_number("n_forward", n_forward, integer=True, ge=1)
        if n_forward not in self._forecasts:
            rates = self.model._forecast(self.state, n_forward)
            rec = self.recording
            t = rec.dataset["time"].values
            coords = {"trial": rec.dataset["trial"].values,
                      "time": ("time", t[-1] + rec.bin_width * np.arange(1, n_forward + 1),
                               {"units": "s", "long_name": "bin centre (after the window)"}),
                      "neuron": rec.dataset["neuron"].values}
            self._forecasts[n_forward] = xr.DataArray(
                rates, dims=DIMS, coords=coords, name="rates",
                attrs={"units": "counts/bin", "long_name": "forward-predicted firing rate",
                       "model": type(self.model).__name__})
        return self._forecasts[n_forward]


class LatentModel(BaseEstimator):
    """Base class of the latent models: a scikit-learn estimator, xarray in and out.

    ``fit(recording)`` learns on the training trials (``split == "train"``; every trial when
    the coordinate is absent) with all neurons visible; ``infer(recording)`` infers the
    latent state of every trial once from held-in neurons only (``heldout`` coordinate; all
    neurons are held in when it is absent) and returns an :class:`Inference`;
    ``transform`` returns its latents ``(trial, time, latent)``, ``predict`` its rates
    ``(trial, time, neuron)`` in counts per bin for every neuron (held-out ones through a
    :class:`~analysis.glm.PoissonGLM` readout fitted on the training trials' latents, unless
    the model has its own readout), ``forecast(recording, n_forward)`` the rates of the
    ``n_forward`` bins after the window (``NotImplementedError`` for a model without dynamics
    to run on), and ``score`` co-smoothing bits per spike on the held-out neurons. Bins the
    recording's ``observed`` mask marks False are left out of every fit and score. Learned
    state ends in ``_``; ``fit_seconds_`` is the wall-clock time of ``fit``.
    """

    _parameter_constraints: dict = {}
    readout_alpha: float = 1e-2

    # --- to implement ---------------------------------------------------------------------
    def _fit_latents(self, counts: np.ndarray, observed: np.ndarray, heldin: np.ndarray, bin_width: float) -> None:
        raise NotImplementedError

    def _infer(self, counts_heldin: np.ndarray, observed_heldin: np.ndarray) -> Any:
        raise NotImplementedError

    def _latents(self, state: Any) -> np.ndarray:
        """Latents ``(trial, time, latent)`` of an inferred state; the state itself by default."""
        return state

    def _uses_glm_readout(self) -> bool:
        """Whether rates come from the shared GLM readout (else from :meth:`_own_rates`)."""
        return True

    def _own_rates(self, state: Any) -> np.ndarray:
        raise NotImplementedError

    def _readout_features(self, latents: np.ndarray) -> np.ndarray:
        """Features the GLM readout sees, ``(trial, time, k)``; the latents themselves by default."""
        return latents

    def _forecast(self, state: Any, n_forward: int) -> np.ndarray:
        raise NotImplementedError(
            f"{type(self).__name__} cannot forecast: it has no dynamics to run on past the recording's window "
            "(GPFA, PCLatentModel and LFADS can)")

    # --- shared -----------------------------------------------------------------------------
    @property
    def can_forecast(self) -> bool:
        """Whether :meth:`forecast` is implemented for this model."""
        return type(self)._forecast is not LatentModel._forecast

    def _check_fitted(self):
        if not hasattr(self, "fit_seconds_"):
            raise ConfigError(f"{type(self).__name__} is not fitted yet; call fit(recording) first")

    def _check_compatible(self, rec: Recording, name: str = "recording"):
        self._check_fitted()
        n = rec.counts.shape[2]
        if n != self.n_neurons_:
            raise DataError(f"{name} has {n} neurons along dim 'neuron'; the model was fitted on {self.n_neurons_}")
        if "heldout" in rec.dataset.coords and not np.array_equal(rec.heldout, self.heldout_):
            raise DataError(f"{name} coordinate 'heldout' differs from the one the model was fitted with")
        if not np.isclose(rec.bin_width, self.bin_width_):
            raise DataError(f"{name}.attrs['bin_width'] is {rec.bin_width} s; the model was fitted at {self.bin_width_} s")

    def fit(self, recording: xr.Dataset | Recording, split: str | None = "train") -> "LatentModel":
        """Fit on the trials with ``split == split`` (every trial if ``split`` is None or the
        coordinate is absent), all neurons visible, unobserved bins left out; returns ``self``."""
        try:
            self._validate_params()
        except InvalidParameterError as error:  # sklearn's message names the parameter and the value
            raise ConfigError(str(error)) from None
        rec = as_recording(recording, split)
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)   # not fitted until this fit has finished
        t0 = _time.perf_counter()
        self.heldout_ = rec.heldout.copy()
        self.n_neurons_ = rec.counts.shape[2]
        self.bin_width_ = rec.bin_width
        # never more intra-op threads than the cores free as the fit starts (a model may choose
        # fewer for its own steps): a thread team wider than that waits at every barrier for a
        # descheduled thread when the machine is shared
        with parallel.threads(parallel.usable()):
            self._fit_latents(rec.counts, rec.observed, rec.heldin, rec.bin_width)
            if self._uses_glm_readout():
                # the training latents are inferred only when a readout is fitted on them
                feats = self._readout_features(self._latents(self._infer(rec.counts[..., rec.heldin],
                                                                         rec.observed[..., rec.heldin])))
                self.readout_ = PoissonGLM(alpha=self.readout_alpha).fit(
                    feats.reshape(-1, feats.shape[-1]), rec.counts.reshape(-1, self.n_neurons_),
                    rec.observed.reshape(-1, self.n_neurons_))
        self.fit_seconds_ = _time.perf_counter() - t0
        return self

    def infer(self, recording: xr.Dataset | Recording, split: str | None = None) -> Inference:
        """Infer the latent state of the trials with ``split == split`` (every trial by default)
        once, from the held-in neurons' observed bins (the neurons held in at ``fit``; a
        ``heldout`` coordinate, if present, must agree); see :class:`Inference`."""
        rec = as_recording(recording, split)
        self._check_compatible(rec)
        hi = ~self.heldout_
        with parallel.threads(parallel.usable()):  # as in fit
            return Inference(self, rec, self._infer(rec.counts[..., hi], rec.observed[..., hi]))

    def transform(self, recording: xr.Dataset | Recording) -> xr.DataArray:
        """Latents ``(trial, time, latent)`` of every trial, inferred from held-in neurons only."""
        return self.infer(recording).latents

    def predict(self, recording: xr.Dataset | Recording) -> xr.DataArray:
        """Rates ``(trial, time, neuron)`` in counts per bin for every neuron, from held-in neurons."""
        return self.infer(recording).rates

    def forecast(self, recording: xr.Dataset | Recording, n_forward: int) -> xr.DataArray:
        """Rates ``(trial, time, neuron)`` in counts per bin for the ``n_forward`` bins after the
        recording's window, the forward prediction that fp-bps scores; the ``time`` coordinate
        continues the bin centres (s). Raises ``NotImplementedError`` for a model that cannot
        forecast (see :attr:`can_forecast`) and :class:`~pcsim.errors.ConfigError` unless ``n_forward >= 1``."""
        if not self.can_forecast:
            self._forecast(None, n_forward)
        return self.infer(recording).forecast(n_forward)

    def score(self, recording: xr.Dataset | Recording, split: str | None = "test") -> float:
        """Co-smoothing bits per spike on the held-out neurons' observed bins of the trials with
        ``split == split`` (every trial if ``split`` is None or the coordinate is absent)."""
        rec = as_recording(recording, split)
        self._check_compatible(rec)
        if not self.heldout_.any():
            raise DataError("the model was fitted with no neuron held out (coordinate 'heldout'); "
                            "co-smoothing needs some")
        ho = self.heldout_
        return float(co_bps(self.infer(rec).rates.values[..., ho], rec.counts[..., ho],
                            observed=rec.observed[..., ho]))


# --------------------------------------------------------------------------------------------
# Config sections from constructor signatures
# --------------------------------------------------------------------------------------------

def _range_metadata(constraints: list) -> dict[str, Any]:
    """``ge``/``gt``/``le``/``lt`` field metadata (:mod:`pcsim.config`) from sklearn Intervals."""
    meta: dict[str, Any] = {}
    for c in constraints:
        if isinstance(c, Interval):
            if c.left is not None:
                meta["ge" if c.closed in ("left", "both") else "gt"] = c.left
            if c.right is not None:
                meta["le" if c.closed in ("right", "both") else "lt"] = c.right
    return meta


@cache
def config_section(model_cls: type, exclude: tuple[str, ...] = ("seed", "device", "dtype", "progress")) -> type:
    """The config section of a latent model: a frozen dataclass built from its ``__init__``.

    One field per constructor parameter (except ``exclude``: settings the experiment supplies),
    with the parameter's default, its annotation as type (a ``StrOptions`` constraint becomes
    ``Literal[...]`` of its choices) and, as :mod:`pcsim.config` field metadata, the ranges of
    the ``Interval`` constraints in the class's ``_parameter_constraints``; so a config key is
    validated by the same declaration the model checks in ``fit``. Returns the dataclass
    (named ``<Model>Section``; the same class for the same arguments).
    """
    hints = typing.get_type_hints(model_cls.__init__)
    constraints = getattr(model_cls, "_parameter_constraints", {})
    fields = []
    for name, p in inspect.signature(model_cls.__init__).parameters.items():
        if name == "self" or name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{model_cls.__name__}.{name} has no default; a config section needs one")
        hint = hints.get(name, type(p.default))
        options = [c for c in constraints.get(name, []) if isinstance(c, StrOptions)]
        if options:
            hint = Literal[tuple(sorted(options[0].options))]
            if None in constraints[name]:
                hint = hint | None
        fields.append((name, hint, dataclasses.field(default=p.default,
                                                     metadata=_range_metadata(constraints.get(name, [])))))
    section = dataclasses.make_dataclass(f"{model_cls.__name__}Section", fields, frozen=True, kw_only=True)
    section.__module__ = model_cls.__module__
    section.__doc__ = (f"Hyper-parameters of :class:`{model_cls.__module__}.{model_cls.__name__}`, one per "
                       "constructor parameter (defaults, types and ranges from the model's own declaration).")
    return section
