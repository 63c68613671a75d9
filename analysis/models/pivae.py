"""pi-VAE: a VAE of population spiking whose latent prior is conditioned on a label.

pi-VAE (Zhou & Wei 2020, "Learning identifiable and interpretable latent models of
high-dimensional neural activity using pi-VAE") models the counts ``y`` ``(neuron,)`` of one
time bin with a latent ``z`` ``(d,)`` whose prior depends on an observed label ``u`` (a trial
condition, or a continuous behaviour variable such as position or heading):

    z | u ~ p(z | u) = N(lambda_mu(u), diag exp(lambda_v(u)))
    y_n | z ~ Poisson(exp(g(z))_n)                 (every neuron)

``lambda`` is a learned table per label for a discrete ``u`` and an MLP of ``u`` for a
continuous one; ``g`` is an MLP decoder (the paper's is a GIN flow, a volume-preserving
invertible network; an MLP keeps the same Poisson likelihood without the injectivity that
their identifiability argument rests on). The approximate posterior combines an encoder of the
counts alone with the label prior, ``q(z | y, u) ∝ q(z | y) p(z | u)`` (a product of Gaussians:
precisions add, means are precision-weighted), and training maximises the ELBO
``E_q[log p(y | z)] - KL(q(z | y, u) || p(z | u))`` (KL in closed form,
:meth:`pcsim.generative.base.Posterior.kl`). :class:`PoissonVAE` is the ablation without a
label: prior ``N(0, I)``, posterior ``q(z | y)``.

Every bin of every training trial is one example; the encoder sees the held-in neurons' counts
(``log(1 + y)``, unobserved entries 0), the decoder predicts every neuron, unobserved entries are
left out of the likelihood. The MLPs are :class:`pcsim.generative.decoder.Layers` (the layer
stacks of pcsim's VAEs); training runs through :func:`pcsim.training.train` with Adam, early
stopping on a validation split of the training trials (:class:`pcsim.training.EarlyStopping`,
best parameters kept) and the NaN guard of :func:`pcsim.training.guarded_step`.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from analysis.models.base import LatentModel, observed_mean_counts
from analysis.glm import poisson_nll
from analysis.recording import Recording, as_recording
from pcsim.arguments import check_numbers
from pcsim.errors import DataError
from pcsim.generative.base import GenerativeModel, Posterior
from pcsim.generative.decoder import Layers, gaussian_posterior
from pcsim.optim import Adam
from pcsim.seeding import seeded
from pcsim.parallel import threads, threads_for_stacks
from pcsim.training import EarlyStopping, guarded_step, train

Tensor = torch.Tensor

__all__ = ["PiVAE", "PoissonVAE", "product_of_gaussians"]


def product_of_gaussians(a: Posterior, b: Posterior) -> Posterior:
    """The normalised product of two diagonal Gaussians ``(..., d)``: precisions add and the mean
    is the precision-weighted mean (pi-VAE's ``q(z | y, u) ∝ q(z | y) p(z | u)``)."""
    pa, pb = torch.exp(-a.log_var), torch.exp(-b.log_var)
    precision = pa + pb
    return Posterior((a.mean * pa + b.mean * pb) / precision, -torch.log(precision))


class PiVAE(LatentModel):
    """pi-VAE (Zhou & Wei 2020) on the :class:`LatentModel` surface; the model is in the module docstring.

    Hyper-parameters: ``n_latents`` ``d``; ``label``: the recording's label, the name of a
    trial coordinate (e.g. ``"condition"``) or of a data variable ``(trial, time)`` or ``(trial,
    time, k)`` (e.g. ``"behaviour"``); ``label_type``: ``"discrete"`` (integer classes, a prior
    table per class seen at ``fit``) or ``"continuous"`` (real values, the prior an MLP of
    ``u`` with ``prior_hidden`` widths); ``hidden``: widths of the encoder's hidden layers (the
    decoder mirrors them); ``epochs`` (at most), ``batch_size`` (bins), ``lr`` (Adam);
    ``validation_fraction`` of the training trials and ``patience`` for early stopping;
    ``seed``, ``device``, ``progress``. ``transform`` uses the label too (``q(z | y, u)``, as in
    the paper), so a recording passed to any method must hold it. Learned: ``encoder_``,
    ``decoder_`` (and ``prior_`` for a continuous label, or ``prior_mean_``/``prior_log_var_``
    ``(classes, d)`` for a discrete one, ``classes_`` the label values), ``loss_`` and
    ``validation_loss_`` ``(epochs run,)`` (negative ELBO per bin, nats), ``best_epoch_``,
    ``fit_seconds_``.
    """

    _parameter_constraints = {
        "n_latents": [Interval(Integral, 1, None, closed="left")],
        "label": [str],
        "label_type": [StrOptions({"discrete", "continuous"})],
        "hidden": ["array-like"],
        "prior_hidden": ["array-like"],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
        "progress": ["boolean"],
    }

    def __init__(self, n_latents: int = 2, *, label: str = "behaviour", label_type: str = "continuous",
                 hidden: tuple[int, ...] = (60, 60), prior_hidden: tuple[int, ...] = (20,), epochs: int = 200,
                 batch_size: int = 256, lr: float = 2e-3, validation_fraction: float = 0.1, patience: int = 20,
                 seed: int = 0, device: str = "cpu", progress: bool = False):
        self.n_latents = n_latents
        self.label = label
        self.label_type = label_type
        self.hidden = hidden
        self.prior_hidden = prior_hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ the label
    #: whether the prior is conditioned on a label (False: the unconditioned VAE)
    conditioned = True

    def _read_labels(self, rec: Recording, fitting: bool = False) -> Tensor | None:
        """The label of every bin of ``rec``: ``(trial, time)`` class indices (discrete) or
        ``(trial, time, k)`` values (continuous), on the model's device; a :class:`DataError`
        names a missing, mis-shaped, non-finite or (discrete) unseen label."""
        if not self.conditioned:
            return None
        ds, name = rec.dataset, self.label
        if name not in ds.variables:
            raise DataError(f"label {name!r}: the recording has no coordinate or variable of that name "
                            f"(it has {sorted(map(str, ds.variables))}); {type(self).__name__} conditions its prior on it")
        da = ds[name]
        B, T = rec.counts.shape[:2]
        if da.dims == ("trial",):
            values = np.broadcast_to(np.asarray(da.values)[:, None], (B, T))
        elif da.dims[:2] == ("trial", "time") and da.ndim in (2, 3):
            values = np.asarray(da.values)
        else:
            raise DataError(f"label {name!r} has dims {da.dims}; expected ('trial',), ('trial', 'time') or "
                            "('trial', 'time', k)")
        if self.label_type == "discrete":
            if values.ndim != 2:
                raise DataError(f"label {name!r}: a discrete label is one class per bin, got dims {da.dims}")
            classes = np.unique(values) if fitting else self.classes_
            index = np.clip(np.searchsorted(classes, values), 0, len(classes) - 1)
            unseen = classes[index] != values
            if unseen.any():
                i, j = np.argwhere(unseen)[0]
                raise DataError(f"label {name!r}[{i}, {j}] = {np.asarray(values[i, j]).tolist()!r} is a class not seen "
                                f"at fit (classes {np.asarray(classes).tolist()})")
            self._classes = classes
            return torch.as_tensor(index, dtype=torch.int64, device=self._device())
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"label {name!r}: a continuous label must be numbers, got dtype {da.dtype}") from None
        if values.ndim == 2:
            values = values[..., None]
        bad = ~np.isfinite(values)
        if bad.any():
            i, j, k = np.argwhere(bad)[0]
            raise DataError(f"label {name!r} holds {int(bad.sum())} NaN/Inf values, first at [{i}, {j}, {k}]")
        if not fitting and values.shape[2] != self.label_width_:
            raise DataError(f"label {name!r} has {values.shape[2]} dimensions; the model was fitted on {self.label_width_}")
        return torch.as_tensor(values, dtype=torch.float32, device=self._device())

    def fit(self, recording, split: str | None = "train") -> "PiVAE":
        """Fit on the trials with ``split == split`` (see :meth:`LatentModel.fit`); their label is read first."""
        rec = as_recording(recording, split)
        self._fit_labels = self._read_labels(rec, fitting=True)
        try:
            return super().fit(rec)
        finally:
            self._fit_labels = None

    def infer(self, recording, split: str | None = None):
        """Infer from held-in neurons and the label (see :meth:`LatentModel.infer`)."""
        rec = as_recording(recording, split)
        self._check_compatible(rec)
        self._infer_labels = self._read_labels(rec)
        try:
            return super().infer(rec)
        finally:
            self._infer_labels = None

    # ------------------------------------------------------------------ the model's pieces
    # the one check of a ``device`` hyper-parameter (a ConfigError naming it), shared with pcsim's generative models
    _device = GenerativeModel._device

    def _prior(self, u: Tensor | None, like: Tensor) -> Posterior:
        """``p(z | u)`` ``(..., d)`` for labels ``u`` (``(...,)`` classes or ``(..., k)`` values), or ``N(0, I)``."""
        if u is None:
            return Posterior.standard_normal(1, self.n_latents, dtype=like.dtype, device=like.device)
        if self.label_type == "discrete":
            return Posterior(self.prior_mean_[u], self.prior_log_var_[u])
        return gaussian_posterior(self.prior_, u)

    def _posterior(self, x: Tensor, u: Tensor | None) -> Posterior:
        """``q(z | y)`` from encoder input ``x`` ``(..., n_heldin)``, times ``p(z | u)`` with a label."""
        q = gaussian_posterior(self.encoder_, x)
        return q if u is None else product_of_gaussians(q, self._prior(u, x))

    def _parameters(self) -> list[Tensor]:
        prior = [] if not self.conditioned else (
            [self.prior_mean_, self.prior_log_var_] if self.label_type == "discrete" else self.prior_.parameters())
        return self.encoder_.parameters() + self.decoder_.parameters() + prior

    def _negative_elbo(self, x: Tensor, y: Tensor, w: Tensor, u: Tensor | None, sample: bool = True) -> Tensor:
        """Negative ELBO summed over the bins ``(n, ...)`` of a batch (nats): encoder input ``x``,
        counts ``y`` and likelihood weight ``w`` ``(n, N)`` of every neuron, labels ``u``."""
        q = self._posterior(x, u)
        z = q.sample(1, None)[0] if sample else q.mean
        recon = poisson_nll(self.decoder_(z), y, w).sum()
        return recon + q.kl(self._prior(u, x)).sum()

    # ------------------------------------------------------------------ LatentModel numerics
    def _fit_latents(self, counts: np.ndarray, observed: np.ndarray, heldin: np.ndarray, bin_width: float) -> None:
        dev = self._device()
        hidden = check_numbers("hidden", self.hidden, integer=True, ge=1)
        prior_hidden = check_numbers("prior_hidden", self.prior_hidden, integer=True, ge=1) if self.conditioned else ()
        y = torch.as_tensor(counts, dtype=torch.float32, device=dev)
        obs = torch.as_tensor(observed, dtype=torch.float32, device=dev)
        B, T, N = y.shape
        hi = torch.as_tensor(heldin, device=dev)
        d = self.n_latents
        u_all = self._fit_labels
        stacks = [((int(hi.sum()), *hidden, 2 * d), self.batch_size), ((d, *reversed(hidden), N), self.batch_size)]
        with seeded(self.seed, dev), threads(threads_for_stacks(stacks)):
            kw = dict(device=dev, dtype=torch.float32)
            self.encoder_ = Layers.init((int(hi.sum()), *hidden, 2 * d), "tanh", mode="discriminative",
                                        seed=self.seed, **kw)
            self.decoder_ = Layers.init((d, *reversed(hidden), N), ("linear",) + ("tanh",) * len(hidden),
                                        mode="generative", seed=self.seed + 1, **kw)
            with torch.no_grad():   # every neuron starts at its mean rate
                log_mean = np.log(observed_mean_counts(counts, observed))
                self.decoder_.biases[-1].copy_(torch.as_tensor(log_mean, dtype=torch.float32).reshape(1, 1, N))
            if self.conditioned and self.label_type == "discrete":
                self.classes_ = self._classes
                self.prior_mean_ = torch.randn(len(self.classes_), d, device=dev)
                self.prior_log_var_ = torch.zeros(len(self.classes_), d, device=dev)
            elif self.conditioned:
                self.label_width_ = int(u_all.shape[-1])
                self.prior_ = Layers.init((self.label_width_, *prior_hidden, 2 * d), "tanh", mode="discriminative",
                                          seed=self.seed + 2, **kw)
            params = self._parameters()
            for p in params:
                p.requires_grad_(True)
            # one example per bin: encoder input, counts, likelihood weight and label, (B*T, .)
            x = (torch.log1p(y[..., hi]) * obs[..., hi]).reshape(B * T, -1)
            yy, ww = y.reshape(B * T, N), obs.reshape(B * T, N)
            uu = None if u_all is None else u_all.reshape(B * T, *u_all.shape[2:])
            order = torch.randperm(B)
            n_val = min(max(int(round(self.validation_fraction * B)), 1), B - 1) if B >= 4 else 0
            bins = torch.arange(B * T).reshape(B, T)
            val, tr = bins[order[:n_val]].reshape(-1).to(dev), bins[order[n_val:]].reshape(-1).to(dev)
            opt = Adam(self.lr)
            bs = min(int(self.batch_size), len(tr))
            snapshot = lambda: [p.detach().clone() for p in params]  # noqa: E731
            early = EarlyStopping(self.patience, snapshot)
            losses, val_losses, epoch_losses = [], [], []

            def batches(epoch):
                perm = tr[torch.randperm(len(tr)).to(dev)]
                return [perm[i:i + bs] for i in range(0, len(perm), bs)]

            def step(idx):
                loss = self._negative_elbo(x[idx], yy[idx], ww[idx], None if uu is None else uu[idx]) / len(idx)
                return guarded_step(opt, params, loss)

            def on_epoch(epoch, seconds):
                losses.append(float(np.mean(epoch_losses)))
                epoch_losses.clear()
                if n_val:
                    with torch.no_grad():
                        v = self._negative_elbo(x[val], yy[val], ww[val], None if uu is None else uu[val],
                                                sample=False) / len(val)
                    val_losses.append(float(v))
                else:
                    val_losses.append(losses[-1])
                early.record(epoch, val_losses[-1])
                return {"loss": f"{losses[-1]:.4g}", "val": f"{val_losses[-1]:.4g}"}

            try:
                train(step, batches, self.epochs, on_step=lambda s: epoch_losses.append(s.output), on_epoch=on_epoch,
                      progress=self.progress, desc=type(self).__name__, parameters=lambda: params,
                      energy=lambda out: out, lr=self.lr, stop=early, max_growth=1e6)
            finally:
                with torch.no_grad():
                    for p, best in zip(params, early.checkpoint):
                        p.copy_(best)
                for p in params:
                    p.requires_grad_(False)
        self.loss_, self.validation_loss_ = np.asarray(losses), np.asarray(val_losses)
        self.best_epoch_ = early.best_epoch
        self._heldin = hi

    def _uses_glm_readout(self) -> bool:
        return False

    def _infer(self, counts_heldin: np.ndarray, observed_heldin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means ``(trial, time, d)`` of ``q(z | y, u)`` and every neuron's rate at them."""
        dev = self._device()
        y = torch.as_tensor(counts_heldin, dtype=torch.float32, device=dev)
        obs = torch.as_tensor(observed_heldin, dtype=torch.float32, device=dev)
        with torch.no_grad():
            z = self._posterior(torch.log1p(y) * obs, getattr(self, "_infer_labels", None)).mean
            rates = torch.exp(self.decoder_(z))
        return z.double().cpu().numpy(), rates.double().cpu().numpy()

    def _latents(self, state) -> np.ndarray:
        return state[0]

    def _own_rates(self, state) -> np.ndarray:
        return state[1]


class PoissonVAE(PiVAE):
    """The unconditioned VAE, pi-VAE's ablation: prior ``N(0, I)``, posterior ``q(z | y)`` (no label);
    otherwise :class:`PiVAE` (same encoder, decoder, training)."""

    _parameter_constraints = {k: v for k, v in PiVAE._parameter_constraints.items() if k not in ("label", "label_type", "prior_hidden")}

    def __init__(self, n_latents: int = 2, *, hidden: tuple[int, ...] = (60, 60), epochs: int = 200,
                 batch_size: int = 256, lr: float = 2e-3, validation_fraction: float = 0.1, patience: int = 20,
                 seed: int = 0, device: str = "cpu", progress: bool = False):
        self.n_latents = n_latents
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress

    conditioned = False
