"""End-stopping from top-down predictions (Rao & Ballard 1999) in a laminar circuit.

A two-level generative predictive-coding network learns natural image patches; the laminar
circuit built from its weights is shown horizontal bars of increasing length, centred on
the classical receptive field (CRF) of the middle level-1 module. The level-1 (V1) error
populations of that module respond more as the bar grows inside the CRF and less once it
extends beyond it: level 2 (V2) has learned that natural contours continue across
neighbouring patches, so a long bar is predicted and a short one is not. With the
feedback lesioned the same cells keep (almost) their full response.

The architecture is Rao & Ballard's. Three level-1 modules each see a ``16 x 16`` patch,
horizontally offset by 5 px, so together they tile a ``16 x 26`` image; each module's
units predict only their own patch and level 2 predicts all level-1 responses. It is one
generative :class:`~pcsim.network.PCNetwork` with sizes ``(n2, 3 n1, 3 * 16 * 16)`` (each
module's own copy of its patch, ``image_errors = "own"``, the shipped setting) or ``(n2, 3 n1,
16 * 26)`` (one image, overlapping columns receiving the sum of the modules' predictions,
``"shared"``): the locality of level 1 is a mask on the level-1 -> image weights
(:func:`module_mask`), re-applied after every optimiser step.

Choices that make the phenomenon emerge, and why:

- *Whitened images.* Both photographs of :func:`sklearn.datasets.load_sample_images` are
  turned grey, filtered by a difference of Gaussians (centre-surround, like the retina and
  LGN; Rao & Ballard 1999 did the same) and scaled to unit pixel variance. Bars go through
  the same filter and scale, so the network sees them in the units it learned.
- *Linear predictions.* With ``f`` linear (and no sparse prior) the relaxed level-1 error is
  ``Pi_1 eps_1 = C^{-1} r_1`` with ``C = I / Pi_1 + W_2^T W_2 / Pi_0`` the prior covariance
  of the level-1 responses that level 2 has learned: the error cells whiten the responses
  by the learned statistics (Srinivasan et al. 1982). A bar running through all three
  patches evokes responses along a direction of large natural variance (contours
  continue), which is predicted and suppressed; a short bar in the middle patch evokes a
  pattern that natural images rarely produce, which is not. ``tanh`` is available but not
  needed.
- *A sparse prior on the level-1 responses while learning* (Rao & Ballard 1999: ``g(r) =
  alpha log(1 + r^2)``; Olshausen & Field 1996), ``network.level1_sparsity``. With Gaussian
  priors alone the trained fields lie in the top-32 principal subspace of the whitened
  patches (71% of their energy vs 13% initially) in an arbitrary rotation, since the
  Gaussian energy is indifferent to rotations of that basis: their spread
  (:func:`~circuits.measures.field_spread`) stays at 6.2 px against 6.5 px initially
  (orientedness 0.27 vs 0.14; seed 0, lr 0.002). The kurtotic prior selects the rotation in
  which responses are sparse: oriented, bandpass, more localised fields (shipped config,
  seeds 0/1/2: median spread 5.57/5.48/5.68 px vs 6.52 initially, orientedness 0.70/0.71/0.71
  vs 0.15, 96% in the principal subspace). The laminar circuit has no sparse prior (its
  populations are linear), so the prior shapes the fields and the circuit runs on them; the
  fixed-point check relaxes the same Gaussian energy (:func:`equilibrium_responses`).
- *Each module has its own image error* (``network.image_errors = "own"``): every module
  predicts its own copy of its patch and the modules interact only through level 2. With
  one image error over the shared, summed columns (``"shared"``) localised fields of
  overlapping modules compete for the same pixels, which by itself end-stops the lesioned
  circuit as much as the intact one (SI ~0.5 both, seed 0, sparsity 1); with Gaussian
  (distributed) fields the shared error works (SI 0.38 vs 0.12 lesioned).
- *A bottleneck at level 2* (64 level-2 units for 96 level-1 responses) so that level 2
  keeps the dominant correlations between modules rather than every pattern.
- *Precisions.* ``Pi_image = 1`` and a small ``Pi_1 = 0.1`` let the image drive the
  level-1 responses (the prior from level 2 only nudges them); ``Pi_0 = 0.03`` (a weak
  prior on the level-2 causes) lets level 2 explain the responses it has learned.
- *Normalised projective fields* (Olshausen & Field 1996). Learning with relaxed
  (maximum-a-posteriori) causes lets weights grow without bound, the causes shrinking to
  match; the rows of both weight matrices are rescaled to unit norm after every step (with
  the mask, a projection onto the constraints), which fixes the scale of the causes and
  keeps relaxation and circuit well conditioned.
- *Short relaxations while learning* (30 steps of 0.3, as usual in PC training): the
  slowest, least-constrained directions are not run to their fixed point. Longer
  relaxations (60 steps of 0.2) learn the same and end-stop slightly less (SI ~0.34
  instead of ~0.37 over seeds), at twice the cost.

The lesioned circuit still suppresses long bars a little (SI ~0.1; the fields' own
structure, and with ``image_errors = "shared"`` the competition for shared pixels): the
feedback lesion is the control that separates the two.

The response of a cell is its sustained rate, averaged over the last ``window_ms`` of the
bar (the circuit is then at the network's relaxed fixed point, which is computed with
:func:`pcsim.inference.relax` and saved beside it as a check). The headline tuning curve is
the *population* response of the middle module: the summed activity of all its error cells
(``l23_pos`` and ``l23_neg`` of every unit), which needs no cell selection. The single-cell
view picks, as physiologists do, the ``n_cells`` error cells that respond most to some bar
inside the CRF in the intact circuit and averages their responses, with and without
feedback. The suppression index is ``SI = (peak - response to the longest bar) / peak``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import xarray as xr

from pcsim import parallel
from pcsim.config import ExperimentConfig
from pcsim.inference import InferenceConfig, init_state, relax
from pcsim.network import PCNetwork
from pcsim.optim import Adam
from pcsim.registry import ExperimentResult, RunContext
from pcsim.rules import StandardPC
from pcsim.training import TrainStep, train, training_energy
from pcsim.errors import ConfigError

from ..images import NaturalPatches, dog_filter, sample_patches, whitened_images
from ..laminar import CircuitParams, LaminarCircuit
from ..coordinates import label, seconds
from ..measures import ERROR_POPULATIONS, field_orientedness, field_spread, principal_fraction, suppression_index
from ..paradigms import Bars, Stimulus
from .sections import engine_object

__all__ = [
    "Config",
    "run",
    "plot",
    "dog_filter",
    "whitened_images",
    "sample_patches",
    "module_mask",
    "constrain_",
    "train_network",
    "lesion_feedback",
    "bar_stimulus",
    "middle_module_responses",
    "equilibrium_responses",
]

Activation = Literal["linear", "tanh"]
ImageErrors = Literal["shared", "own"]
AREAS = ("LGN", "V1", "V2")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class ImagesSection:
    """Pre-filtering of the natural images: a difference of Gaussians with standard
    deviations ``center_sigma`` and ``surround_sigma`` (px); ``border`` px are cropped
    from every side of the filtered photographs (filter edge effects) before patches are
    drawn."""

    center_sigma: float = field(default=1.0, metadata={"gt": 0})
    surround_sigma: float = field(default=3.0, metadata={"gt": 0})
    border: int = field(default=12, metadata={"ge": 0})

    def __post_init__(self):
        if self.surround_sigma <= self.center_sigma:
            raise ConfigError(f"surround_sigma ({self.surround_sigma}) must exceed center_sigma ({self.center_sigma})")


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    """The Rao-Ballard hierarchy: ``modules`` level-1 modules (odd, so that one is in the
    middle) of ``module_units`` units, each predicting a ``patch x patch`` patch, patches
    ``offset`` px apart horizontally; ``level2_units`` units at level 2. ``level2_activation``
    and ``level1_activation``: ``f`` applied to each level when it predicts the one below.
    Precisions (dimensionless): ``image_precision`` of the image error, ``level1_precision``
    of the level-1 error (level 1 vs level 2's prediction), ``prior_precision`` of the
    level-2 causes' Gaussian prior."""

    patch: int = field(default=16, metadata={"ge": 2})
    offset: int = field(default=5, metadata={"ge": 1})
    modules: int = field(default=3, metadata={"ge": 3})
    module_units: int = field(default=32, metadata={"ge": 1})
    level2_units: int = field(default=64, metadata={"ge": 1})
    level2_activation: Activation = "linear"
    level1_activation: Activation = "linear"
    image_precision: float = field(default=1.0, metadata={"gt": 0})
    level1_precision: float = field(default=0.1, metadata={"gt": 0})
    prior_precision: float = field(default=0.03, metadata={"gt": 0})
    level1_sparsity: float = field(default=0.0, metadata={"ge": 0})
    level1_sparse_scale: float = field(default=1.0, metadata={"gt": 0})
    level2_sparsity: float = field(default=0.0, metadata={"ge": 0})
    image_errors: ImageErrors = "shared"

    def __post_init__(self):
        if self.modules % 2 == 0:
            raise ConfigError(f"modules must be odd (one module in the middle), got {self.modules}")
        if self.offset >= self.patch:
            raise ConfigError(f"offset ({self.offset}) must be smaller than patch ({self.patch}): the patches must overlap")

    @property
    def height(self) -> int:
        """Height of the image level 2 sees (px)."""
        return self.patch

    @property
    def width(self) -> int:
        """Width of the image level 2 sees (px): ``patch + (modules - 1) * offset``."""
        return self.patch + (self.modules - 1) * self.offset

    @property
    def data_units(self) -> int:
        """Width of the network's data layer: the image's pixels, or every module's own patch (``image_errors = "own"``)."""
        return self.height * (self.width if self.image_errors == "shared" else self.modules * self.patch)

    @property
    def crf(self) -> tuple[int, int]:
        """Columns ``[start, stop)`` of the middle module's patch, its classical receptive field."""
        start = (self.modules // 2) * self.offset
        return start, start + self.patch


@dataclass(frozen=True, kw_only=True)
class TrainingSection:
    """Standard PC (relax ``steps`` Euler steps of ``dt/tau``, then one local update) with
    Adam at ``lr`` on ``batches`` batches of ``batch_size`` fresh random patches.
    ``threads``: torch intra-op threads for the run (0 keeps torch's setting); the matrices
    are small, and one thread avoids a synchronisation cost that makes a loaded 2-core
    machine an order of magnitude slower."""

    batches: int = field(default=1000, metadata={"ge": 1})
    batch_size: int = field(default=100, metadata={"ge": 1})
    lr: float = field(default=2e-3, metadata={"gt": 0})
    steps: int = field(default=30, metadata={"ge": 1})
    dt: float = field(default=1.5, metadata={"gt": 0})
    tau: float = field(default=5.0, metadata={"gt": 0})
    threads: int = field(default=1, metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class BarsSection(Bars):
    """The bars: every field of :class:`~circuits.paradigms.Bars` (``lengths`` and
    ``thickness`` in px, ``orientation``, centre, ``contrast`` as a fraction of the grey range
    above the mean-luminance background, on at ``onset_ms`` for ``duration_ms``), declared
    there once, on the image level 2 sees (its ``height`` and ``width`` come from
    ``[network]``) and centred on the middle module by default; ``window_ms``: a cell's
    response is its mean rate over the last ``window_ms`` of the bar."""

    height: int = field(default=0, init=False, repr=False)  # the network's image
    width: int = field(default=0, init=False, repr=False)
    window_ms: float = field(default=200.0, metadata={"gt": 0, "units": "ms"})

    def __post_init__(self):
        if list(self.lengths) != sorted(set(self.lengths)) or len(self.lengths) < 2:
            raise ConfigError(f"lengths must be at least two strictly increasing values, got {list(self.lengths)}")
        if self.window_ms > self.duration_ms:
            raise ConfigError(f"window_ms ({self.window_ms}) must not exceed duration_ms ({self.duration_ms})")


@dataclass(frozen=True, kw_only=True)
class CircuitSection(CircuitParams):
    """The laminar circuit's :class:`~circuits.laminar.CircuitParams` (time constants and
    Euler step ``dt`` in ms, declared there once), plus ``record_every_ms``: how often rates
    are recorded."""

    record_every_ms: float = field(default=5.0, metadata={"gt": 0, "units": "ms"})

    def params(self) -> CircuitParams:
        """The :class:`~circuits.laminar.CircuitParams` fields of this section."""
        return self.circuit_params()


@dataclass(frozen=True, kw_only=True)
class MeasureSection:
    """``n_cells``: error cells (unit and sign) of the middle module kept for the
    single-cell tuning curve, those with the largest response to a bar inside the CRF.
    ``equilibrium_steps``: Euler steps (of the training step size) of pcsim's own
    relaxation on the bars, whose fixed point the circuit's sustained response is checked
    against."""

    n_cells: int = field(default=16, metadata={"ge": 1})
    equilibrium_steps: int = field(default=5000, metadata={"ge": 1})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``endstopping`` experiment."""

    images: ImagesSection = field(default_factory=ImagesSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    bars: BarsSection = field(default_factory=lambda: BarsSection(
        lengths=(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 26), contrast=0.5, duration_ms=800.0))
    circuit: CircuitSection = field(default_factory=CircuitSection)
    measure: MeasureSection = field(default_factory=MeasureSection)

    def __post_init__(self):
        w = self.network.width
        if max(self.bars.lengths) > w:
            raise ConfigError(f"bars.lengths reach {max(self.bars.lengths)} px but the image is {w} px wide")
        if self.bars.thickness > self.network.height:
            raise ConfigError(f"bars.thickness ({self.bars.thickness}) exceeds the image height ({self.network.height})")
        if not any(l <= self.network.patch for l in self.bars.lengths):
            raise ConfigError(f"bars.lengths must include a bar inside the CRF (<= patch = {self.network.patch} px)")
        if self.measure.n_cells > 2 * self.network.module_units:
            raise ConfigError(f"measure.n_cells ({self.measure.n_cells}) exceeds the middle module's "
                             f"{2 * self.network.module_units} error cells")


# --------------------------------------------------------------------------- network
def module_mask(module_units: int, modules: int = 3, patch: int = 16, offset: int = 5,
                image_errors: ImageErrors = "shared") -> torch.Tensor:
    """Which level-1 -> image weights exist: ``(modules * module_units, patch * width)`` bool
    with ``width = patch + (modules - 1) * offset``; row ``m * module_units + u`` (unit ``u``
    of module ``m``) is True exactly on the pixels of module ``m``'s patch, columns
    ``[m * offset, m * offset + patch)`` of the row-major flattened image. With
    ``image_errors = "own"`` the data layer is the patches side by side (:func:`module_pixels`)
    and the mask ``(modules * module_units, modules * patch * patch)`` is block diagonal."""
    width = patch + (modules - 1) * offset
    if image_errors == "own":
        own = torch.zeros(modules, module_units, modules, patch * patch, dtype=torch.bool)
        for m in range(modules):
            own[m, :, m] = True
        return own.reshape(modules * module_units, modules * patch * patch)
    mask = torch.zeros(modules, module_units, patch, width, dtype=torch.bool)
    for m in range(modules):
        mask[m, :, :, m * offset:m * offset + patch] = True
    return mask.reshape(modules * module_units, patch * width)


def module_pixels(net_cfg: NetworkSection) -> np.ndarray | None:
    """Where the data layer's units sit in the row-major ``height x width`` image: ``(data_units,)``
    indices, module 0's patch row by row, then module 1's, ... (``image_errors = "own"``), or
    None when the data layer is the image itself (``"shared"``)."""
    if net_cfg.image_errors == "shared":
        return None
    rows = np.arange(net_cfg.height)[:, None] * net_cfg.width
    return np.concatenate([(rows + m * net_cfg.offset + np.arange(net_cfg.patch)).ravel() for m in range(net_cfg.modules)])


def _mask(net_cfg: NetworkSection) -> torch.Tensor:
    return module_mask(net_cfg.module_units, net_cfg.modules, net_cfg.patch, net_cfg.offset, net_cfg.image_errors)


def image_fields(net: PCNetwork, net_cfg: NetworkSection) -> np.ndarray:
    """The level-1 projective fields of ensemble member 0 on the image: ``(modules, module_units,
    height, width)``, zero outside each module's patch (with ``image_errors = "own"`` each
    module's weights on its own patch copy are put back where that patch lies)."""
    W1 = net.weights[1][0].cpu().numpy()
    idx = module_pixels(net_cfg)
    if idx is not None:
        full = np.zeros((W1.shape[0], net_cfg.height * net_cfg.width), W1.dtype)
        own = _mask(net_cfg).numpy()
        for k in range(W1.shape[0]):
            full[k, idx[own[k]]] = W1[k, own[k]]
        W1 = full
    return W1.reshape(net_cfg.modules, net_cfg.module_units, net_cfg.height, net_cfg.width)


def constrain_(net: PCNetwork, mask: torch.Tensor) -> None:
    """Project ``net`` (sizes ``(n2, n1, n_pixels)``) back onto its constraints, in place:
    level-1 -> image weights outside each module's patch are set to exactly 0 (``mask``
    ``(n1, n_pixels)`` bool), and every row of both weight matrices (a unit's projective
    field, ``(E, n_{l-1}, n_l)`` rows) is rescaled to unit Euclidean norm."""
    W2, W1 = net.weights
    W1.mul_(mask.to(W1.device, W1.dtype))
    for W in (W2, W1):
        W.div_(W.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def initial_network(net_cfg: NetworkSection, seed: int, *, device: str = "cpu") -> PCNetwork:
    """The untrained Rao-Ballard hierarchy :func:`train_network` starts from: a generative
    :class:`PCNetwork` with sizes ``(n2, modules * n1, patch * width)``, the activations and
    precisions of ``net_cfg``, initialised with ``seed`` and projected onto the constraints
    (:func:`module_mask`, unit-norm fields) by :func:`constrain_`."""
    n1 = net_cfg.modules * net_cfg.module_units
    net = PCNetwork.init(
        (net_cfg.level2_units, n1, net_cfg.data_units), (net_cfg.level2_activation, net_cfg.level1_activation),
        mode="generative", seed=seed, precision=(net_cfg.level1_precision, net_cfg.image_precision),
        prior_precision=net_cfg.prior_precision, sparsity=(net_cfg.level2_sparsity, net_cfg.level1_sparsity, 0.0),
        sparse_scale=net_cfg.level1_sparse_scale, device=device)
    constrain_(net, _mask(net_cfg).to(device))
    return net


def train_network(net_cfg: NetworkSection, train_cfg: TrainingSection, images: list[np.ndarray], seed: int,
                  *, device: str = "cpu", progress: bool = False) -> tuple[PCNetwork, np.ndarray]:
    """Build and train the Rao-Ballard hierarchy on natural ``images`` (whitened ``(H, W)``).

    The network is a generative :class:`PCNetwork` with sizes ``(n2, modules * n1,
    patch * width)`` and the activations and precisions of ``net_cfg``, initialised with
    ``seed``, level-1 weights masked by :func:`module_mask`. Each of ``train_cfg.batches``
    steps draws a fresh batch of patches (``numpy`` generator seeded with ``seed``), relaxes
    and applies the local update of :class:`~pcsim.rules.StandardPC` with
    :class:`~pcsim.optim.Adam` (one pass of :class:`~circuits.images.NaturalPatches` through
    :func:`pcsim.training.train`), then :func:`constrain_` (an ``on_step`` hook). Returns the trained network and the
    per-layer energy at the relaxed state, ``(batches, 3)`` (prior, level 1, image; mean
    over the batch, dimensionless).
    """
    net = initial_network(net_cfg, seed, device=device)
    mask = _mask(net_cfg).to(device)
    rule = StandardPC(InferenceConfig(steps=train_cfg.steps, dt=train_cfg.dt, tau=train_cfg.tau))
    opt = Adam(train_cfg.lr)
    patches = NaturalPatches(images, net_cfg.height, net_cfg.width, train_cfg.batches, train_cfg.batch_size, seed, device)
    history = np.empty((train_cfg.batches, 3))

    def after_step(s: TrainStep) -> None:
        # the projection onto the constraints, then the energy of the relaxed state
        constrain_(net, mask)
        history[s.step] = s.output.energy.mean((0, 1)).cpu().numpy()

    idx = module_pixels(net_cfg)
    if idx is not None:  # each module's own copy of its patch
        idx = torch.as_tensor(idx, device=device)
        patches = _Indexed(patches, idx)
    train(lambda x: rule.step(net, opt, data=x), lambda epoch: patches, 1, on_step=after_step, progress=progress,
          parameters=net.parameters, energy=training_energy, lr=train_cfg.lr,
          state={"parameters": net.parameters(), "optimizer": opt, "history": history})
    return net, history


@dataclass
class _Indexed:
    """The batches of ``batches`` ``(B, height * width)`` at the data layer's pixels ``index`` (:func:`module_pixels`)."""

    batches: NaturalPatches
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (x[:, self.index] for x in self.batches)


def lesion_feedback(net: PCNetwork) -> PCNetwork:
    """A copy of the two-level ``net`` whose level 2 predicts nothing: the level-2 ->
    level-1 weights ``(E, n2, n1)`` and biases are zeroed, so the level-1 error is the
    level-1 response itself (times its precision), with no top-down prediction subtracted."""
    out = net.clone()
    out.weights[0].zero_()
    out.biases[0].zero_()
    return out


# --------------------------------------------------------------------------- stimuli and measures
def bar_stimulus(net_cfg: NetworkSection, bars_cfg: BarsSection, images_cfg: ImagesSection, scale: float) -> tuple[Stimulus, np.ndarray]:
    """Horizontal bars of every length centred on the middle module, as the network sees
    them: :class:`~circuits.paradigms.Bars` images ``(lengths, height, width)`` (contrast in
    grey levels) passed through the training images' :func:`dog_filter` and divided by their
    ``scale``. Returns the :class:`Stimulus` (one block per length, patterns ``(lengths,
    height * width)``) and the raw bar images ``(lengths, height, width)``."""
    bars = engine_object(bars_cfg, Bars, height=net_cfg.height, width=net_cfg.width)
    raw = bars.images()
    h, w = net_cfg.height, net_cfg.width

    def prefilter(patterns: np.ndarray) -> np.ndarray:
        imgs = patterns.reshape(-1, h, w)
        return np.stack([dog_filter(im, images_cfg.center_sigma, images_cfg.surround_sigma) for im in imgs]).reshape(
            len(imgs), -1) / scale

    return bars.build().map_patterns(prefilter), raw


def middle_module_responses(circuit: LaminarCircuit, stimulus: Stimulus, net_cfg: NetworkSection,
                            bars_cfg: BarsSection, record_every_ms: float, *, progress: bool = False) -> xr.DataArray:
    """Run ``circuit`` on the bar ``stimulus`` and return the V1 error rates of the middle
    module: ``(length, time, population, unit)`` with population ``l23_pos``/``l23_neg``,
    ``unit`` the module's ``module_units`` units, ``time`` in s from block start (rate
    units)."""
    ds = circuit.run(stimulus, record_every_ms=record_every_ms, progress=progress, record_stimulus=False)
    n1 = net_cfg.module_units
    start = (net_cfg.modules // 2) * n1
    rate = ds.rate.sel(area="V1", population=list(ERROR_POPULATIONS)).isel(unit=slice(start, start + n1))
    rate = rate.drop_vars([c for c in rate.coords if c not in ("time", "population")])
    return rate.rename(trial="length").assign_coords(length=("length", np.asarray(bars_cfg.lengths), {"units": "px"}),
                                                      unit=np.arange(n1))


def equilibrium_responses(net: PCNetwork, stimulus: Stimulus, net_cfg: NetworkSection,
                          inference: InferenceConfig) -> np.ndarray:
    """The middle module's level-1 errors at the relaxed fixed point of ``net`` itself
    (:func:`pcsim.inference.relax` with the bar images clamped at the data layer):
    ``(lengths, 2, module_units)``, the rectified positive and negative parts of the
    precision-weighted error ``Pi_1 (x_1 - mu_1)``, the steady state that the circuit's
    ``l23_pos``/``l23_neg`` populations approach (rate units). The energy relaxed is the
    circuit's, the Gaussian one: a sparse prior on the level-1 responses
    (``NetworkSection.level1_sparsity``) shapes the learned fields, but the laminar circuit's
    populations are linear and have none, so it is left out here too."""
    net = replace(net, spec=replace(net.spec, sparsity=()))
    x = torch.as_tensor(stimulus.patterns, dtype=net.dtype, device=net.device)
    relaxed = relax(net, init_state(net, data=x), inference)
    n1 = net_cfg.module_units
    start = (net_cfg.modules // 2) * n1
    err = relaxed.peps[1][0, :, start:start + n1].cpu().numpy()
    return np.stack([np.maximum(err, 0), np.maximum(-err, 0)], axis=1)


# --------------------------------------------------------------------------- experiment
def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Train the hierarchy, build the intact and the feedback-lesioned circuit, show both
    the bars, and measure the middle module's V1 error responses against bar length.

    The Dataset holds ``error_rate`` (feedback, length, time, population, unit; rate units,
    time in s), the windowed ``response`` (feedback, length, population, unit), the
    population tuning ``tuning`` and the single-cell tuning ``tuning_cells`` (feedback,
    length), the ``selected`` cells (population, unit), the network's own fixed point
    ``equilibrium_response`` / ``equilibrium_tuning``, the learned level-1
    ``receptive_field`` (module, module_unit, row, col) with the localisation and
    orientedness of each field, trained and initial (:func:`~circuits.measures.field_spread`,
    :func:`~circuits.measures.field_orientedness`, over the module's own patch), the stimuli ``bar`` and
    ``bar_filtered`` (length, row, col; length in px) and the ``training_energy`` (batch,
    layer). The summary reports the suppression indices with and without feedback.
    """
    with parallel.threads(config.training.threads or torch.get_num_threads()):   # 0: unchanged
        return _run(config, ctx)


def _run(config: Config, ctx: RunContext) -> ExperimentResult:
    nc, bc, cc = config.network, config.bars, config.circuit
    images, scale = whitened_images(config.images.center_sigma, config.images.surround_sigma, config.images.border)
    net, history = train_network(nc, config.training, images, config.seed, device=ctx.device, progress=ctx.progress)
    stimulus, raw = bar_stimulus(nc, bc, config.images, scale)
    idx = module_pixels(nc)
    seen = stimulus if idx is None else stimulus.map_patterns(lambda p: p[:, idx])  # at the network's data layer
    params = cc.params()
    relaxation = InferenceConfig(steps=config.measure.equilibrium_steps, dt=config.training.dt, tau=config.training.tau)
    rates, fixed_points = [], []
    for n in (net, lesion_feedback(net)):
        circuit = LaminarCircuit.from_network(n, area_names=AREAS, params=params)
        rates.append(middle_module_responses(circuit, seen, nc, bc, cc.record_every_ms, progress=ctx.progress))
        fixed_points.append(equilibrium_responses(n, seen, nc, relaxation))
    equilibrium = xr.DataArray(np.stack(fixed_points), dims=("feedback", "length", "population", "unit"))
    error_rate = xr.concat(rates, dim="feedback").assign_coords(feedback=["intact", "lesioned"])
    stop = seconds(bc.onset_ms + bc.duration_ms)
    in_window = (error_rate.time >= stop - seconds(bc.window_ms) - 1e-9) & (error_rate.time < stop - 1e-9)
    response = error_rate.where(in_window, drop=True).mean("time")

    lengths = np.asarray(bc.lengths)
    inside = lengths <= nc.patch
    tuning = response.sum(("population", "unit"))
    # single cells: those with the largest response to some bar inside the CRF (intact circuit)
    intact = response.sel(feedback="intact").stack(cell=("population", "unit"))
    best = intact.isel(length=np.flatnonzero(inside)).max("length").values
    chosen = np.argsort(-best, kind="stable")[:config.measure.n_cells]
    selected = np.zeros(best.shape, bool)
    selected[chosen] = True
    selected = xr.DataArray(selected.reshape(2, nc.module_units), dims=("population", "unit"),
                            coords={"population": list(ERROR_POPULATIONS), "unit": np.arange(nc.module_units)})
    tuning_cells = response.where(selected).sum(("population", "unit")) / config.measure.n_cells

    h, w = nc.height, nc.width
    W1 = image_fields(net, nc)
    W1_init = image_fields(initial_network(nc, config.seed), nc)
    own = [slice(m * nc.offset, m * nc.offset + nc.patch) for m in range(nc.modules)]  # each module's patch
    spread = np.stack([field_spread(W[m][..., own[m]]) for W in (W1, W1_init) for m in range(nc.modules)]).reshape(
        2, nc.modules, nc.module_units)
    oriented = np.stack([field_orientedness(W[m][..., own[m]]) for W in (W1, W1_init) for m in range(nc.modules)]).reshape(
        2, nc.modules, nc.module_units)
    # the principal subspace of the training patches (one module's patch): where a Gaussian energy puts the fields
    patches = sample_patches(images, 20 * h * nc.patch, h, nc.patch, np.random.default_rng(config.seed))
    principal = np.stack([principal_fraction(W[m][..., own[m]], patches, nc.module_units)
                          for W in (W1, W1_init) for m in range(nc.modules)]).reshape(2, nc.modules, nc.module_units)
    ds = xr.Dataset(
        {
            "error_rate": (error_rate.dims, error_rate.values.astype(np.float32),
                           {"units": "rate units", "long_name": "V1 error rate, middle module"}),
            "response": (response.dims, response.values,
                         {"units": "rate units", "long_name": f"mean error rate over the last {bc.window_ms:g} ms of the bar"}),
            "tuning": (tuning.dims, tuning.values,
                       {"units": "rate units", "long_name": "summed error activity of the middle module"}),
            "tuning_cells": (tuning_cells.dims, tuning_cells.values,
                             {"units": "rate units", "long_name": f"mean response of the {config.measure.n_cells} selected cells"}),
            "selected": (selected.dims, selected.values, {"units": "", "long_name": "cells kept for tuning_cells"}),
            "equilibrium_response": (equilibrium.dims, equilibrium.values,
                                     {"units": "rate units", "long_name": "rectified level-1 errors at the network's relaxed fixed point"}),
            "equilibrium_tuning": (("feedback", "length"), equilibrium.sum(("population", "unit")).values,
                                   {"units": "rate units", "long_name": "summed level-1 error of the middle module at the fixed point"}),
            "receptive_field": (("module", "module_unit", "row", "col"), W1,
                                {"units": "1", "long_name": "level-1 projective fields (level-1 -> image weights, unit norm)"}),
            "field_spread": (("weights", "module", "module_unit"), spread,
                             {"units": "px", "long_name": "RMS spread of a field's weight energy about its centroid"}),
            "field_orientedness": (("weights", "module", "module_unit"), oriented,
                                   {"units": "1", "long_name": "spectral anisotropy of a field, 1 - lambda_min/lambda_max"}),
            "field_principal_fraction": (("weights", "module", "module_unit"), principal,
                                         {"units": "1", "long_name": "fraction of a field in the top principal subspace "
                                                                     "(module_units components) of the training patches"}),
            "bar": (("length", "row", "col"), raw, {"units": "grey level (fraction of range)", "long_name": "bar image"}),
            "bar_filtered": (("length", "row", "col"), stimulus.patterns.reshape(len(lengths), h, w),
                             {"units": "1 (training-image pixel s.d.)",
                              "long_name": "bar after DoG pre-filtering, as the network sees it"}),
            "training_energy": (("batch", "layer"), history,
                                {"units": "1", "long_name": "energy at the relaxed state, batch mean"}),
        },
        coords={
            "feedback": ("feedback", ["intact", "lesioned"], {"units": "", "long_name": "V2 -> V1 feedback"}),
            "length": ("length", lengths, {"units": "px", "long_name": "bar length"}),
            "time": ("time", error_rate.time.values, {"units": "s", "long_name": "time from block start"}),
            "population": ("population", list(ERROR_POPULATIONS)),
            "unit": ("unit", np.arange(nc.module_units), {"units": "", "long_name": "unit of the middle level-1 module"}),
            "module": ("module", np.arange(nc.modules), {"units": "", "long_name": "level-1 module, left to right"}),
            "module_unit": ("module_unit", np.arange(nc.module_units), {"units": "", "long_name": "unit within a level-1 module"}),
            "row": ("row", np.arange(h), {"units": "px", "long_name": "image row"}),
            "col": ("col", np.arange(w), {"units": "px", "long_name": "image column"}),
            "weights": ("weights", ["trained", "initial"], {"units": "", "long_name": "network weights"}),
            "batch": ("batch", np.arange(config.training.batches), {"units": "", "long_name": "training batch"}),
            "layer": ("layer", ["prior", "level1", "image"], {"units": "", "long_name": "energy term (PC layer)"}),
        },
        attrs={
            "crf_start_col": nc.crf[0], "crf_stop_col": nc.crf[1], "patch": nc.patch, "offset": nc.offset,
            "modules": nc.modules, "bar_onset_ms": bc.onset_ms, "bar_duration_ms": bc.duration_ms,
            "window_ms": bc.window_ms, "prefilter_scale": scale, "level1_sparsity": nc.level1_sparsity,
            "level1_sparse_scale": nc.level1_sparse_scale, "image_errors": nc.image_errors,
        },
    )
    si = {f: suppression_index(tuning.sel(feedback=f).values) for f in ("intact", "lesioned")}
    si_cells = {f: suppression_index(tuning_cells.sel(feedback=f).values) for f in ("intact", "lesioned")}
    ds["suppression_index"] = ("feedback", [si["intact"], si["lesioned"]],
                               {"units": "1", "long_name": "(peak - response to the longest bar) / peak of tuning"})
    ds["suppression_index_cells"] = ("feedback", [si_cells["intact"], si_cells["lesioned"]],
                                     {"units": "1", "long_name": "suppression index of tuning_cells"})
    ds.attrs["peak_length_px"] = int(lengths[int(np.argmax(tuning.sel(feedback="intact").values))])
    summary = {
        "suppression_index": si["intact"],
        "suppression_index_lesioned": si["lesioned"],
        "suppression_index_cells": si_cells["intact"],
        "suppression_index_cells_lesioned": si_cells["lesioned"],
        "suppression_index_equilibrium": suppression_index(ds.equilibrium_tuning.sel(feedback="intact").values),
        "suppression_index_equilibrium_lesioned": suppression_index(ds.equilibrium_tuning.sel(feedback="lesioned").values),
        "peak_length_px": ds.attrs["peak_length_px"],
        "crf_px": nc.patch,
        "final_energy": {"prior": history[-1, 0], "level1": history[-1, 1], "image": history[-1, 2]},
        "field_spread_px": {"trained": float(np.median(spread[0])), "initial": float(np.median(spread[1]))},
        "field_orientedness": {"trained": float(np.median(oriented[0])), "initial": float(np.median(oriented[1]))},
        "field_principal_fraction": {"trained": float(np.median(principal[0])), "initial": float(np.median(principal[1]))},
        "field_measures": "median over all level-1 fields, each on its module's own patch; spread: RMS distance of the "
                          "weight energy from its centroid (an even field over 16 px: 6.5 px); orientedness in [0, 1]",
    }
    return ExperimentResult(label(ds), summary)


def plot(results: xr.Dataset) -> dict:
    """Figures from the saved Dataset: ``endstopping`` (the CRF and the bars; population
    and single-cell tuning against bar length with and without feedback; time courses of
    the population error for a short, the optimal and the longest bar) and
    ``receptive_fields`` (the learned level-1 projective fields of the middle module)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    lengths = results.length.values
    c0, c1 = int(results.attrs["crf_start_col"]), int(results.attrs["crf_stop_col"])
    fig = Figure(figsize=(15, 3.4))
    ax = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.2, 1, 1, 1]})
    # the CRF and the bars: the longest bar, the other bars' extents as ticks
    bar = results.bar_filtered.isel(length=-1).values
    lim = float(np.abs(results.bar_filtered).max())
    ax[0].imshow(bar, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[0].add_patch(Rectangle((c0 - 0.5, -0.5), c1 - c0, results.sizes["row"], fill=False, ec="k", lw=2, label="CRF (middle module)"))
    patch, offset = int(results.attrs["patch"]), int(results.attrs["offset"])
    for m in range(int(results.attrs["modules"])):
        if m * offset != c0:
            ax[0].add_patch(Rectangle((m * offset - 0.5, -0.4 + 0.3 * m), patch, results.sizes["row"] - 0.2, fill=False,
                                      ec="0.5", lw=1, ls="--"))
    center = (results.sizes["col"] - 1) / 2
    for k, l in enumerate(lengths):
        ax[0].plot([center - l / 2, center + l / 2], [results.sizes["row"] + 0.8 + 0.5 * k] * 2, color="C1", lw=1.5)
    ax[0].set(title="longest bar (filtered), CRF (black)\nand patches of the neighbours (grey)", xticks=[], yticks=[],
              ylim=(results.sizes["row"] + 1 + 0.5 * len(lengths), -1))

    styles = {"intact": ("C0", "-", "with feedback"), "lesioned": ("C3", "--", "feedback lesioned")}
    for j, (var, title) in enumerate((("tuning", "population (all error cells)"),
                                      ("tuning_cells", f"{int(results.selected.sum())} selected cells"))):
        a = ax[1 + j]
        index = results["suppression_index" if var == "tuning" else "suppression_index_cells"]
        for f in results.feedback.values:
            col, ls, lab = styles[str(f)]
            y = results[var].sel(feedback=f).values
            peak = y.max()
            si = float(index.sel(feedback=f))
            a.plot(lengths, y / peak if peak > 0 else y, ls, color=col, marker="o", ms=3, label=f"{lab} (SI {si:.2f})")
            if var == "tuning" and "equilibrium_tuning" in results:
                eq = results.equilibrium_tuning.sel(feedback=f).values
                a.plot(lengths, eq / peak if peak > 0 else eq, "x", color="k", ms=4,
                       label="relaxed network (fixed point)" if f == "intact" else None)
        a.axvspan(0, c1 - c0, color="0.9", zorder=0, label="inside the CRF")
        a.set(xlabel="bar length (px)", ylabel="response / peak", title=f"V1 error, middle module:\n{title}", ylim=(0, 1.08))
        a.legend(fontsize=8, loc="lower right")

    pop = results.error_rate.sum(("population", "unit"))
    peak_len = int(results.attrs["peak_length_px"])
    for l, col in ((lengths[0], "0.6"), (peak_len, "C0"), (lengths[-1], "k")):
        for f in results.feedback.values:
            ax[3].plot(results.time * 1000, pop.sel(feedback=f, length=l), styles[str(f)][1], color=col, lw=1.2,
                       label=f"{l} px, {styles[str(f)][2]}")
    ax[3].axvspan(results.attrs["bar_onset_ms"] + results.attrs["bar_duration_ms"] - results.attrs["window_ms"],
                  results.attrs["bar_onset_ms"] + results.attrs["bar_duration_ms"], color="0.9", zorder=0,
                  label="response window")
    ax[3].set(xlabel="time from block start (ms)", ylabel="summed error rate", title="population error over time")
    ax[3].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    figs = {"endstopping": fig}

    mid = int(results.attrs["modules"]) // 2
    rf = results.receptive_field.isel(module=mid).values[..., c0:c1]
    n = rf.shape[0]
    has = "field_spread" in results
    order = np.argsort(results.field_spread.sel(weights="trained").isel(module=mid).values, kind="stable") if has \
        else np.arange(n)
    cols = min(8, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(1.5 * cols + 1.2, 1.6 * rows + 1.3))
    axes = fig.subplots(rows, cols, squeeze=False)
    lim = float(np.abs(rf).max()) or 1.0  # one symmetric scale for every field, so the colour bar reads them all
    image = None
    for k, a in enumerate(axes.ravel()):
        a.set_axis_off()
        if k < n:
            u = order[k]
            image = a.imshow(rf[u], cmap="RdBu_r", vmin=-lim, vmax=lim)
            if has:
                sp = float(results.field_spread.sel(weights="trained").isel(module=mid, module_unit=u))
                a.set_title(f"unit {u}: {sp:.1f} px", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="weight (field has unit norm)")
    title = "learned level-1 projective fields, middle module"
    if has:
        sp = results.field_spread.isel(module=mid)
        ori = results.field_orientedness.isel(module=mid)
        title += (f", sorted by spread (RMS px of weight energy; most localised first)\nmedian spread "
                  f"{float(sp.sel(weights='trained').median()):.2f} px trained vs {float(sp.sel(weights='initial').median()):.2f} "
                  f"px initial; orientedness {float(ori.sel(weights='trained').median()):.2f} vs "
                  f"{float(ori.sel(weights='initial').median()):.2f}")
        if "field_principal_fraction" in results:
            pf = results.field_principal_fraction.isel(module=mid)
            title += (f"; in the patches' principal subspace {float(pf.sel(weights='trained').median()):.2f} vs "
                      f"{float(pf.sel(weights='initial').median()):.2f}")
        lam = float(results.attrs.get("level1_sparsity", 0.0))
        title += (f"\nsparse prior on the level-1 responses, {lam:g} log(1 + r^2/s^2) (Rao & Ballard 1999)" if lam > 0
                  else "\n(Gaussian priors learn that subspace in any rotation: the localised fields of Rao & Ballard "
                       "need a sparse prior, network.level1_sparsity)")
    fig.suptitle(title, fontsize=9)
    figs["receptive_fields"] = fig
    return figs
