"""The data sets every generative model is compared on; none is downloaded.

- :func:`digits`: scikit-learn's bundled 8x8 digits (1797 images, 64 pixels with 17 grey
  levels 0..16, 10 classes), scaled to ``[0, 1]`` by ``x / 16``, with a seeded stratified
  train/test split, and :func:`dequantise` for likelihoods of the discrete pixels;
- :func:`mnist1d`: MNIST-1D (Greydanus 2020) made by its generator ``make_dataset`` (offline,
  never the package's download path), 40 samples per sequence min-max scaled to ``[0, 1]``;
- :func:`nonlinear_ica`: sources whose variances change across segments, mixed by a random
  invertible leaky-ReLU MLP (Hyvarinen & Morioka 2016; Khemakhem et al. 2020), with the true
  sources, the segment as auxiliary variable and the exact mixing and unmixing maps.

Each returns one :class:`GenerativeData`: float64 CPU tensors ``x_*`` ``(N, D)``, integer
``labels_*`` / ``aux_*`` ``(N,)`` (or None) and what is particular to the set in ``extra``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from pcsim.arguments import check_number
from pcsim.data import split_indices
from pcsim.errors import ConfigError, DataError

from .base import as_data

Tensor = torch.Tensor

__all__ = ["GenerativeData", "MixingMLP", "dequantise", "digits", "mnist1d", "nonlinear_ica"]


@dataclass(frozen=True)
class GenerativeData:
    """A train/test split for generative models: ``x_train`` ``(N_train, D)``, ``x_test``
    ``(N_test, D)`` (float64); ``labels_*`` ``(N,)`` int64 class labels (probe accuracy, the
    sample-quality classifier) or None; ``aux_*`` ``(N,)`` int64 auxiliary labels for a
    conditional prior (iVAE, conditional-prior PC) or None; ``levels``: the number of discrete
    values a feature takes (17 for the digits; None for continuous data), which sets the
    dequantisation and :attr:`log_jacobian`; ``extra``: what only this set has (the ICA
    sources and maps); ``name``."""

    x_train: Tensor
    x_test: Tensor
    labels_train: Tensor | None = None
    labels_test: Tensor | None = None
    aux_train: Tensor | None = None
    aux_test: Tensor | None = None
    levels: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def n_features(self) -> int:
        """``D``, the width of an example."""
        return int(self.x_train.shape[1])

    @property
    def log_jacobian(self) -> float:
        """``-D log(levels)`` (nats per example; 0 for continuous data): what turns the density of
        :func:`dequantise`'d data on ``[0, 1]^D`` into a bound on the log-probability of the
        discrete data, ``log P(x) >= E_u[log p(x_deq)] + log_jacobian``."""
        return 0.0 if self.levels is None else -self.n_features * math.log(self.levels)


def _split(n: int, labels: np.ndarray | None, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of ``n`` examples (:func:`pcsim.data.split_indices`), in their original order."""
    tr, te = split_indices(n, labels, test_fraction, seed)
    return np.sort(tr), np.sort(te)


def _tensor(a: np.ndarray, name: str) -> Tensor:
    return as_data(a, name) if a.ndim == 2 else torch.as_tensor(a)


def _fraction(test_fraction: float) -> float:
    return check_number("test_fraction", test_fraction, gt=0, lt=1)


def digits(test_fraction: float = 0.2, seed: int = 0) -> GenerativeData:
    """scikit-learn's 8x8 digits, ``x = pixel / 16`` in ``[0, 1]`` ``(N, 64)``, split into train
    and test stratified by class with ``seed`` (1437 / 360 at ``test_fraction`` 0.2); labels are
    the digit classes, ``aux`` None, ``levels`` 17. The split is the one
    :func:`pcsim.data.load_digits` makes at the same ``seed`` and ``test_fraction`` (the same
    :func:`pcsim.data.split_indices`), so generative and classification experiments test on the same
    images; here the examples are in their original order. For likelihoods use :func:`dequantise` and
    add :attr:`GenerativeData.log_jacobian` (``-64 log 17 = -181.3`` nats) to report nats per
    example of the discrete images."""
    from sklearn.datasets import load_digits

    test_fraction = _fraction(test_fraction)
    seed = check_number("seed", seed, integer=True, ge=0)
    d = load_digits()
    tr, te = _split(len(d.target), d.target, test_fraction, seed)
    x = d.data / 16.0
    lab = d.target.astype(np.int64)
    return GenerativeData(_tensor(x[tr], "digits x_train"), _tensor(x[te], "digits x_test"),
                          torch.as_tensor(lab[tr]), torch.as_tensor(lab[te]), levels=17,
                          extra={"image_shape": (8, 8)}, name="digits")


def dequantise(x, levels: int = 17, seed: int = 0) -> Tensor:
    """Uniform dequantisation of ``x`` ``(N, D)`` on the grid ``k / (levels - 1)``, ``k = 0..levels-1``
    (the digits: ``x = k / 16``): ``x_deq = (x (levels - 1) + u) / levels`` with ``u ~ U(0, 1)``
    drawn from ``seed``, so each discrete value ``k`` owns the cell ``[k, k + 1) / levels`` of
    ``(0, 1)``. A density ``p`` on ``[0, 1]^D`` gives the discrete data the probability
    ``P(k) = int_cell p = levels^-D int_{[0,1)^D} p((k + u) / levels) du``, hence by Jensen
    ``log P(k) >= E_u[log p(x_deq)] - D log(levels)`` (Theis et al. 2016; Ho et al. 2019): report
    ``-(log p(x_deq) + log_jacobian)`` as the NLL in nats per example, ``log_jacobian = -D
    log(levels)`` (:attr:`GenerativeData.log_jacobian`). ``u`` is kept inside ``[eps, 1 - eps]``
    so that ``x_deq`` lies strictly inside ``(0, 1)``. Returns float64 ``(N, D)``."""
    levels = check_number("levels", levels, integer=True, ge=2)
    seed = check_number("seed", seed, integer=True, ge=0)
    t = as_data(x)
    k = t * (levels - 1)
    off = (k - k.round()).abs()
    if (off > 1e-6).any() or (k < -1e-6).any() or (k > levels - 1 + 1e-6).any():
        i, j = (int(v) for v in torch.nonzero((off > 1e-6) | (k < -1e-6) | (k > levels - 1 + 1e-6))[0])
        raise DataError(f"x[{i}, {j}] = {float(t[i, j])!r} is not on the grid k / {levels - 1} of levels={levels}")
    eps = torch.finfo(t.dtype).eps
    u = torch.rand(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype).clamp(eps, 1 - eps)
    return (k.round() + u) / levels


def mnist1d(num_samples: int = 4000, test_fraction: float = 0.2, seed: int = 0) -> GenerativeData:
    """MNIST-1D (Greydanus 2020) from its generator, offline: ``mnist1d.data.make_dataset`` with
    ``num_samples`` (a multiple of 10: the generator makes ``num_samples // 10`` per class) and
    ``seed``, then min-max scaled over all generated examples to ``[0, 1]`` (the generator itself
    standardises with the statistics of all its examples; this is the same fixed affine map
    followed by a rescaling) and split stratified by class with ``seed``. ``x`` ``(N, 40)``,
    labels the classes 0..9, continuous (``levels`` None). The generator seeds Python's and
    NumPy's global random states; both are restored afterwards, so calling this leaves no trace
    on other random draws."""
    from mnist1d.data import get_dataset_args, make_dataset

    num_samples = check_number("num_samples", num_samples, integer=True, ge=20)
    if num_samples % 10:
        raise ConfigError(f"num_samples must be a multiple of 10 (one tenth per class), got {num_samples}")
    test_fraction = _fraction(test_fraction)
    seed = check_number("seed", seed, integer=True, ge=0)
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x, lab = np.asarray(d["x"], dtype=np.float64), np.asarray(d["y"], dtype=np.int64)
    x = (x - x.min()) / (x.max() - x.min())
    tr, te = _split(len(lab), lab, test_fraction, seed)
    return GenerativeData(_tensor(x[tr], "mnist1d x_train"), _tensor(x[te], "mnist1d x_test"),
                          torch.as_tensor(lab[tr]), torch.as_tensor(lab[te]), name="mnist1d")


@dataclass(frozen=True)
class MixingMLP:
    """An invertible MLP ``R^d -> R^d``: ``h_0 = s``, ``h_l = leaky(h_{l-1} W_l)`` for ``l < L`` and
    ``x = h_{L-1} W_L`` (no activation on the last layer), ``leaky(a) = a`` for ``a >= 0`` and
    ``slope * a`` otherwise. Each ``W_l`` ``(d, d)`` is ``U diag(sv) V^T`` with random orthogonal
    ``U``, ``V`` and singular values in ``[1, 2]`` (condition number at most 2), so the map and
    its inverse :meth:`inverse` are bi-Lipschitz and the unmixing is numerically exact. Both map
    ``(N, d)`` to ``(N, d)`` (float64 tensors; arrays are accepted)."""

    weights: tuple[Tensor, ...]
    slope: float = 0.2

    def __call__(self, s) -> Tensor:
        """Mix sources ``s`` ``(N, d)`` into observations ``x`` ``(N, d)``."""
        h = torch.as_tensor(s, dtype=torch.float64)
        for i, w in enumerate(self.weights):
            h = h @ w
            if i < len(self.weights) - 1:
                h = torch.where(h >= 0, h, self.slope * h)
        return h

    def inverse(self, x) -> Tensor:
        """Unmix observations ``x`` ``(N, d)`` into the sources ``(N, d)``, the exact inverse of :meth:`__call__`."""
        h = torch.as_tensor(x, dtype=torch.float64)
        for i, w in reversed(list(enumerate(self.weights))):
            if i < len(self.weights) - 1:
                h = torch.where(h >= 0, h, h / self.slope)
            h = torch.linalg.solve(w.T, h.T).T
        return h


def _well_conditioned(d: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(d, d)`` matrix ``U diag(sv) V^T``: Haar-random orthogonal ``U``, ``V``, singular values ``U(1, 2)``."""
    def orthogonal() -> np.ndarray:
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        return q * np.sign(np.diag(r))  # the sign fix makes q Haar-distributed (Mezzadri 2007)
    return orthogonal() @ np.diag(rng.uniform(1.0, 2.0, d)) @ orthogonal().T


def nonlinear_ica(n_sources: int = 2, n_segments: int = 10, n_per_segment: int = 200, n_layers: int = 3,
                  distribution: Literal["gaussian", "laplace"] = "gaussian", slope: float = 0.2,
                  test_fraction: float = 0.2, seed: int = 0) -> GenerativeData:
    """A nonlinear-ICA data set with known sources and an auxiliary variable (Hyvarinen & Morioka
    2016's segment-wise nonstationary sources; Khemakhem et al. 2020's iVAE experiments).

    Segment ``u = 0..n_segments-1`` draws a variance ``lambda_{u,j}`` per source ``j``, log-uniform
    on ``[0.05, 5]`` (a factor of 100: with ``U(0.5, 3)``, a factor of 6, the segment carries so
    little information about the sources that even with a linear mixing a fitted iVAE often ties
    the VAE);
    its ``n_per_segment`` examples have independent sources ``s_j ~ N(0, lambda_{u,j})`` (or a
    zero-mean Laplace of that variance, scale ``sqrt(lambda / 2)``), mixed by a random
    :class:`MixingMLP` of ``n_layers`` layers with leaky-ReLU ``slope``: ``x = f(s)`` ``(N,
    n_sources)``, noise-free, so ``f.inverse(x)`` recovers ``s``. Split stratified by segment
    with ``seed``, which also draws the variances, the sources and the mixing. ``aux`` and
    ``labels`` are the segment index; ``extra`` holds ``sources_train`` / ``sources_test``
    ``(N, n_sources)``, ``variances`` ``(n_segments, n_sources)`` and ``mixing`` (the
    :class:`MixingMLP`; ``mixing.inverse`` unmixes)."""
    n_sources = check_number("n_sources", n_sources, integer=True, ge=1)
    n_segments = check_number("n_segments", n_segments, integer=True, ge=2)
    n_per_segment = check_number("n_per_segment", n_per_segment, integer=True, ge=2)
    n_layers = check_number("n_layers", n_layers, integer=True, ge=1)
    slope = check_number("slope", slope, gt=0, le=1)
    test_fraction = _fraction(test_fraction)
    seed = check_number("seed", seed, integer=True, ge=0)
    if distribution not in ("gaussian", "laplace"):
        raise ConfigError(f"distribution must be 'gaussian' or 'laplace', got {distribution!r}")
    rng = np.random.default_rng(seed)
    variances = np.exp(rng.uniform(math.log(0.05), math.log(5.0), (n_segments, n_sources)))
    seg = np.repeat(np.arange(n_segments), n_per_segment)
    std = np.sqrt(variances[seg])
    if distribution == "gaussian":
        s = rng.standard_normal(std.shape) * std
    else:
        s = rng.laplace(0.0, 1.0, std.shape) * std / math.sqrt(2.0)
    mixing = MixingMLP(tuple(torch.as_tensor(_well_conditioned(n_sources, rng)) for _ in range(n_layers)), slope)
    x = mixing(s).numpy()
    tr, te = _split(len(seg), seg, test_fraction, seed)
    seg_t = torch.as_tensor(seg)
    return GenerativeData(
        _tensor(x[tr], "ica x_train"), _tensor(x[te], "ica x_test"), seg_t[tr], seg_t[te], seg_t[tr], seg_t[te],
        extra={"sources_train": torch.as_tensor(s[tr]), "sources_test": torch.as_tensor(s[te]),
               "variances": torch.as_tensor(variances), "mixing": mixing},
        name="nonlinear_ica")
