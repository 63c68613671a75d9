"""An LFADS-style sequential variational autoencoder of binned spike counts.

LFADS (Latent Factor Analysis via Dynamical Systems; Sussillo et al. 2016, Pandarinath et al.
2018; the lfads-torch re-implementation of Sedler & Pandarinath 2023) explains each trial's
counts ``y`` ``(time, neuron)`` as Poisson draws from rates set by a low-dimensional dynamical
system that runs on its own from an initial condition:

    g0 ~ N(0, I)                                   (``ic_dim``)
    h_0 = W_0 g0 + b_0,   h_t = GRU(h_{t-1}, u_t)   (generator, ``generator_dim``)
    f_t = W_f h_t                                   (factors, ``n_latents``)
    y_t,n ~ Poisson(exp(W_r f_t + b_r)_n)           (every neuron, held-in and held-out)

and infers ``q(g0 | y) = N(m, diag exp(v))`` with a bidirectional GRU run over the held-in
counts (its two final states, concatenated, read out linearly to ``(m, v)``). With a
controller (``controller_dim > 0``) the generator also receives inferred inputs
``u_t ~ q(u_t | y) = N(.)`` (``co_dim``) from a controller GRU fed a second bidirectional
encoding of the counts and the previous factors, with the prior ``u_t ~ N(0, I)`` (LFADS's
autoregressive prior is replaced by this white one). The controller is on by default
(``controller_dim = 32``, ``co_dim = 2``) although the Lorenz benchmark is autonomous. Trained
on some 300 trials, the generator run from ``g0`` alone explained the training trials almost as
well as the true rates but new trials far worse (co-bps, seed 2: training trials 0.77 against the
true rates' 0.80, test trials 0.71 against 0.88): an initial condition inferred from a new trial
does not carry a learned chaotic flow through the whole second. With inferred inputs the model
corrects the trajectory from the counts as it goes and comes close to the true rates on both
(0.79 and 0.85); test co-bps / latent R2 on seeds 0, 1, 2 go from 0.813 / 0.926, 0.997 / 0.913,
0.710 / 0.880 to 0.876 / 0.986, 1.091 / 0.983, 0.854 / 0.978 (configs/lorenz_latents.toml).
Training maximises the ELBO

    E_q[log p(y | g0, u)] - beta_kl * (KL(q(g0) || p(g0)) + sum_t KL(q(u_t) || p(u_t)))
                          - beta_l2 * 1/2 |W_hh|^2 / numel   (the recurrent weights)

with the KL weight ``beta_kl`` and the L2 weight ``beta_l2`` warmed up linearly from 0 over the
first ``warmup_epochs`` (against posterior collapse early in training), the KL in closed form
(:meth:`pcsim.generative.base.Posterior.kl`), reparameterised samples, gradient clipping and
**coordinated dropout** (Keshtkaran & Pandarinath 2019): in every training step a random
fraction ``cd_rate`` of the held-in input entries is zeroed (the rest scaled by
``1 / (1 - cd_rate)``), and the held-in reconstruction is scored only on the zeroed entries
(scaled by ``1 / cd_rate``), so no entry can be reconstructed from itself and the model cannot
learn an identity map. Held-out neurons are never input and always scored.

Training runs through :func:`pcsim.training.train` with early stopping on a validation split of
the training trials (after warm-up; the best parameters are kept) and the learning rate decayed
on a plateau of the same validation loss (``lr_decay`` after ``lr_patience`` epochs without a new
best, down to ``lr_min``; lfads-torch's ReduceLROnPlateau). The validation loss is the held-out
neurons' Poisson NLL of the validation trials inferred from their held-in neurons, the
co-smoothing criterion the model is scored on (the selection of AutoLFADS and the Neural Latents
Benchmark; ``select_on = "heldout"``), or the negative ELBO at full weights and posterior means
(``"elbo"``, also used when no neuron is held out). A step whose loss or gradient is NaN/Inf leaves the parameters as
they were and makes ``train`` raise :class:`~pcsim.errors.LearningDivergenceError` naming the
epoch and batch; the last good parameters stay in ``checkpoint_``. Inference (and validation)
uses the posterior means (``n_samples = 0``) or, as lfads-torch's posterior sampling, averages
the rates and factors of ``n_samples`` draws of ``g0`` (and ``u_t``) from the posterior, the
posterior mean of the rate rather than the rate at the posterior mean (drawn under ``seed``,
so still deterministic); ``forecast`` runs the generator on past the window with the prior mean
input from each draw's last state and averages the rates. Deterministic on the CPU under ``seed``: every random draw (initial weights, batch order,
dropout, coordinated dropout, samples) comes from a torch generator state forked and seeded for
the fit, the caller's global state untouched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from analysis.glm import poisson_nll
from analysis.models.base import LatentModel, observed_mean_counts
from pcsim.errors import LearningDivergenceError
from pcsim.generative.base import GenerativeModel, Posterior
from pcsim.generative.metrics import collapse_diagnostics
from pcsim.optim import Adam
from pcsim.seeding import seeded
from pcsim.parallel import threads
from pcsim.training import EarlyStopping, guarded_step, train

Tensor = torch.Tensor

__all__ = ["LFADS", "LFADSNetwork", "coordinated_dropout"]


def coordinated_dropout(counts: Tensor, observed: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """Coordinated dropout (Keshtkaran & Pandarinath 2019) of held-in counts ``(B, T, N)``.

    A Bernoulli(``rate``) draw per entry (torch's current generator) marks entries dropped.
    Returns the encoder's input (kept entries scaled by ``1 / (1 - rate)``, dropped and
    unobserved ones 0) and the reconstruction weight (``1 / rate`` on dropped, observed
    entries, 0 elsewhere), both ``(B, T, N)``: an entry the encoder sees is never scored. With
    ``rate = 0`` every observed entry is input and scored (weight 1)."""
    if rate <= 0:
        return counts * observed, observed
    dropped = (torch.rand(counts.shape, device=counts.device) < rate).to(counts.dtype)
    return counts * observed * (1.0 - dropped) / (1.0 - rate), observed * dropped / rate


class LFADSNetwork(torch.nn.Module):
    """The LFADS encoder, controller, generator and readout (module docstring), ``float32``.

    ``n_in`` held-in neurons are encoded; rates are predicted for ``n_out`` neurons.
    :meth:`forward` maps encoder input ``(B, T, n_in)`` to log-rates ``(B, T, n_out)``, factors
    ``(B, T, n_latents)``, the posteriors of ``g0`` ``(B, ic_dim)`` and of the inputs
    ``(B, T, co_dim)`` (None without a controller) and the generator's last state ``(B, generator_dim)``.
    """

    def __init__(self, n_in: int, n_out: int, n_latents: int, ic_dim: int, encoder_dim: int, generator_dim: int,
                 controller_dim: int, co_dim: int, dropout: float):
        super().__init__()
        self.ic_encoder = torch.nn.GRU(n_in, encoder_dim, batch_first=True, bidirectional=True)
        self.ic_head = torch.nn.Linear(2 * encoder_dim, 2 * ic_dim)
        self.ic_to_generator = torch.nn.Linear(ic_dim, generator_dim)
        self.co_dim = co_dim if controller_dim > 0 else 0
        if self.co_dim:
            self.ci_encoder = torch.nn.GRU(n_in, encoder_dim, batch_first=True, bidirectional=True)
            self.controller = torch.nn.GRUCell(2 * encoder_dim + n_latents, controller_dim)
            self.co_head = torch.nn.Linear(controller_dim, 2 * co_dim)
        # without a controller the generator's input is a constant 0 (width 1): it runs on its own
        self.generator = torch.nn.GRU(max(self.co_dim, 1), generator_dim, batch_first=True)
        self.factors = torch.nn.Linear(generator_dim, n_latents, bias=False)
        self.readout = torch.nn.Linear(n_latents, n_out)
        self.dropout = torch.nn.Dropout(dropout)

    def recurrent_weights(self) -> list[Tensor]:
        """The recurrent kernels the L2 penalty acts on (generator, and controller if any)."""
        return [self.generator.weight_hh_l0] + ([self.controller.weight_hh] if self.co_dim else [])

    def encode_ic(self, x: Tensor) -> Posterior:
        """``q(g0 | y)`` from encoder input ``x`` ``(B, T, n_in)``: ``(B, ic_dim)`` mean and log-variance."""
        _, h = self.ic_encoder(self.dropout(x))                       # (2, B, H): forward and backward finals
        out = self.ic_head(self.dropout(torch.cat([h[0], h[1]], -1)))
        d = out.shape[-1] // 2
        return Posterior(out[:, :d], out[:, d:])

    def initial_state(self, g0: Tensor) -> Tensor:
        """The generator's initial state ``h_0`` ``(1, B, generator_dim)`` from ``g0`` ``(B, ic_dim)``."""
        return self.ic_to_generator(g0)[None]

    def run_generator(self, h: Tensor, n_steps: int) -> tuple[Tensor, Tensor]:
        """Run the generator ``n_steps`` bins on its own (zero input, the inputs' prior mean) from
        state ``h`` ``(1, B, G)``: log-rates ``(B, n_steps, n_out)`` (no dropout) and the last state."""
        zero = h.new_zeros(h.shape[1], n_steps, max(self.co_dim, 1))
        states, h = self.generator(zero, h)
        return self.readout(self.factors(states)), h

    def forward(self, x: Tensor, sample: bool = True):
        """One pass (module docstring); ``sample``: draw ``g0`` and ``u_t`` from their posteriors
        (training), else use the posterior means (inference)."""
        B, T, _ = x.shape
        q_ic = self.encode_ic(x)
        g0 = q_ic.sample(1, None)[0] if sample else q_ic.mean
        h = self.initial_state(g0)
        if not self.co_dim:
            states, h = self.generator(x.new_zeros(B, T, 1), h)
            factors = self.factors(self.dropout(states))
            return self.readout(factors), factors, q_ic, None, h[0]
        ci, _ = self.ci_encoder(self.dropout(x))                       # (B, T, 2H)
        c = x.new_zeros(B, self.controller.hidden_size)
        f = x.new_zeros(B, self.factors.out_features)
        means, log_vars, factors = [], [], []
        for t in range(T):
            c = self.controller(torch.cat([ci[:, t], f], -1), c)
            out = self.co_head(self.dropout(c))
            m, v = out[:, :self.co_dim], out[:, self.co_dim:]
            u = m + torch.exp(0.5 * v) * torch.randn_like(m) if sample else m
            state, h = self.generator(u[:, None], h)
            f = self.factors(self.dropout(state[:, 0]))
            means.append(m), log_vars.append(v), factors.append(f)
        factors = torch.stack(factors, 1)
        return self.readout(factors), factors, q_ic, Posterior(torch.stack(means, 1), torch.stack(log_vars, 1)), h[0]


@dataclass(frozen=True)
class LFADSState:
    """An inference of :class:`LFADS` on some trials: ``factors`` ``(trial, time, n_latents)``,
    ``rates`` ``(trial, time, neuron)`` (counts per bin), each the mean over the posterior draws,
    and the generator's last state of each draw ``(draw, trial, generator_dim)`` (a tensor on the
    model's device; one draw, the posterior mean, when ``n_samples = 0``), from which forecasts run on."""

    factors: np.ndarray
    rates: np.ndarray
    last_state: Tensor


class LFADS(LatentModel):
    """LFADS-style sequential VAE (Pandarinath et al. 2018; Sedler & Pandarinath 2023) on the
    :class:`LatentModel` surface; the model is stated in the module docstring.

    Hyper-parameters: ``n_latents`` (factors, what ``transform`` returns), ``ic_dim`` (``g0``),
    ``encoder_dim`` (each direction of the bidirectional GRUs), ``generator_dim``,
    ``controller_dim`` (0: no controller, an autonomous generator; module docstring for the
    default) and ``co_dim`` (inferred inputs per bin); ``dropout`` (on encoder inputs and generator states); ``cd_rate`` (coordinated
    dropout fraction, 0 off); ``kl_weight`` and ``l2_weight`` (the penalties' final weights),
    ``warmup_epochs``; ``epochs`` (at most), ``batch_size``, ``lr`` (Adam), ``lr_decay``,
    ``lr_patience`` and ``lr_min`` (the learning rate times ``lr_decay`` after ``lr_patience``
    epochs without a new best validation loss, never below ``lr_min``; ``lr_decay = 1``: constant),
    ``grad_clip`` (gradient norm); ``validation_fraction`` of the training trials held back for
    early stopping with ``patience`` epochs on the loss ``select_on`` names (module docstring);
    ``n_samples`` (posterior draws averaged at inference, 0: the posterior mean); ``seed``,
    ``device``, ``progress`` (a bar over the batches).

    Learned: ``network_`` (:class:`LFADSNetwork`), ``loss_`` ``(epochs run,)`` (training loss per
    trial per epoch, nats), ``validation_loss_`` ``(epochs run,)`` (per validation trial, nats:
    the held-out neurons' NLL or the negative ELBO, ``select_on``), ``lr_`` ``(epochs run,)`` (the
    learning rate of each epoch), ``validation_index_`` (positions, among the trials ``fit`` saw,
    of the validation trials), ``best_epoch_`` (1-based, the parameters kept), ``kl_per_latent_``
    ``(ic_dim,)`` (mean KL of ``q(g0)`` to the prior per dimension over the training trials,
    nats) and ``active_units_`` (``g0`` dimensions whose posterior mean varies over training
    trials by more than 0.01, Burda et al. 2016): the posterior-collapse diagnostics
    (:func:`pcsim.generative.metrics.collapse_diagnostics`); ``fit_seconds_``.
    """

    _parameter_constraints = {
        "n_latents": [Interval(Integral, 1, None, closed="left")],
        "ic_dim": [Interval(Integral, 1, None, closed="left")],
        "encoder_dim": [Interval(Integral, 1, None, closed="left")],
        "generator_dim": [Interval(Integral, 1, None, closed="left")],
        "controller_dim": [Interval(Integral, 0, None, closed="left")],
        "co_dim": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "cd_rate": [Interval(Real, 0, 1, closed="left")],
        "kl_weight": [Interval(Real, 0, None, closed="left")],
        "l2_weight": [Interval(Real, 0, None, closed="left")],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "lr_patience": [Interval(Integral, 1, None, closed="left")],
        "lr_min": [Interval(Real, 0, None, closed="left")],
        "grad_clip": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "select_on": [StrOptions({"heldout", "elbo"})],
        "n_samples": [Interval(Integral, 0, None, closed="left")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        n_latents: int = 8,
        *,
        ic_dim: int = 32,
        encoder_dim: int = 64,
        generator_dim: int = 64,
        controller_dim: int = 32,
        co_dim: int = 2,
        dropout: float = 0.1,
        cd_rate: float = 0.3,
        kl_weight: float = 1.0,
        l2_weight: float = 1.0,
        warmup_epochs: int = 30,
        epochs: int = 300,
        batch_size: int = 64,
        lr: float = 1e-2,
        lr_decay: float = 0.5,
        lr_patience: int = 10,
        lr_min: float = 1e-4,
        grad_clip: float = 200.0,
        validation_fraction: float = 0.1,
        patience: int = 25,
        select_on: str = "elbo",
        n_samples: int = 0,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = False,
    ):
        self.n_latents = n_latents
        self.ic_dim = ic_dim
        self.encoder_dim = encoder_dim
        self.generator_dim = generator_dim
        self.controller_dim = controller_dim
        self.co_dim = co_dim
        self.dropout = dropout
        self.cd_rate = cd_rate
        self.kl_weight = kl_weight
        self.l2_weight = l2_weight
        self.warmup_epochs = warmup_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_patience = lr_patience
        self.lr_min = lr_min
        self.grad_clip = grad_clip
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.select_on = select_on
        self.n_samples = n_samples
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ helpers
    # the one check of a ``device`` hyper-parameter (a ConfigError naming it), shared with pcsim's generative models
    _device = GenerativeModel._device

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self._device())

    def _warmup(self, epoch: float) -> float:
        """Fraction of the penalties' final weights at (fractional, 1-based) ``epoch``: linear from 0."""
        return 1.0 if self.warmup_epochs == 0 else min(1.0, epoch / self.warmup_epochs)

    def loss(self, net: LFADSNetwork, counts: Tensor, observed: Tensor, heldin: Tensor, *, warmup: float = 1.0,
             cd_rate: float = 0.0, sample: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective of one batch: counts and observed mask ``(B, T, N)`` of every
        neuron, ``heldin`` ``(N,)`` bool. Returns the loss per trial (nats, scalar: the negative
        ELBO with the penalties at ``warmup`` times their weights) and its terms (``recon``,
        ``kl_ic``, ``kl_co``, ``l2``, and ``log_rates`` ``(B, T, N)``). With ``cd_rate`` the
        held-in entries go through :func:`coordinated_dropout`."""
        x, w_in = coordinated_dropout(counts[..., heldin], observed[..., heldin], cd_rate)
        log_rates, _, q_ic, q_co, _ = net(x, sample=sample)
        weight = observed.clone()
        weight[..., heldin] = w_in
        B = counts.shape[0]
        recon = poisson_nll(log_rates, counts, weight).sum() / B
        kl_ic = q_ic.kl_to_standard_normal().sum() / B
        kl_co = q_co.kl_to_standard_normal().sum() / B if q_co is not None else log_rates.new_zeros(())
        l2 = sum(0.5 * (w * w).sum() / w.numel() for w in net.recurrent_weights())
        total = recon + warmup * (self.kl_weight * (kl_ic + kl_co) + self.l2_weight * l2)
        return total, {"recon": recon, "kl_ic": kl_ic, "kl_co": kl_co, "l2": l2, "log_rates": log_rates}

    # ------------------------------------------------------------------ LatentModel numerics
    def _fit_latents(self, counts: np.ndarray, observed: np.ndarray, heldin: np.ndarray, bin_width: float) -> None:
        """Train on counts ``(trial, time, neuron)`` (module docstring), early-stopped on a
        validation split of these trials."""
        dev = self._device()
        y, obs = self._tensor(counts), self._tensor(observed)
        hi = torch.as_tensor(heldin, device=dev)
        ho = ~hi
        on_heldout = self.select_on == "heldout" and bool(ho.any())
        B = y.shape[0]
        n_val = int(round(self.validation_fraction * B)) if B >= 4 else 0
        n_val = min(max(n_val, 1 if B >= 4 else 0), B - 1)
        with seeded(self.seed, dev), threads(self._threads()):
            order = torch.randperm(B)
            val, tr = order[:n_val].to(dev), order[n_val:].to(dev)
            net = LFADSNetwork(int(heldin.sum()), y.shape[2], self.n_latents, self.ic_dim, self.encoder_dim,
                               self.generator_dim, self.controller_dim, self.co_dim, self.dropout).to(dev)
            with torch.no_grad():   # start every neuron at its mean rate
                net.readout.bias.copy_(self._tensor(np.log(observed_mean_counts(counts, observed))))
            params = list(net.parameters())
            opt = Adam(self.lr)
            n_tr = len(tr)
            bs = min(int(self.batch_size), n_tr)
            steps_per_epoch = math.ceil(n_tr / bs)
            losses, val_losses, epoch_losses, lrs = [], [], [], []
            last_decay = [0]
            early = EarlyStopping(self.patience, lambda: copy.deepcopy(net.state_dict()), start=self.warmup_epochs)

            def batches(epoch):
                perm = tr[torch.randperm(n_tr).to(dev)]
                return [(epoch, i, perm[i * bs:(i + 1) * bs]) for i in range(steps_per_epoch)]

            def step(batch):
                epoch, i, idx = batch
                net.train()
                warm = self._warmup(epoch - 1 + (i + 1) / steps_per_epoch)
                loss, _ = self.loss(net, y[idx], obs[idx], hi, warmup=warm, cd_rate=self.cd_rate)
                return guarded_step(opt, params, loss, self.grad_clip)

            def on_step(s):
                epoch_losses.append(s.output)

            def on_epoch(epoch, seconds):
                losses.append(float(np.mean(epoch_losses)))
                epoch_losses.clear()
                if n_val and on_heldout:   # co-smoothing of the validation trials: held-out NLL from held-in counts
                    rates, _, _ = self._posterior(net, y[val][..., hi] * obs[val][..., hi])
                    nll = poisson_nll(torch.log(rates[..., ho]), y[val][..., ho], obs[val][..., ho])
                    val_losses.append(float(nll.sum()) / n_val)
                elif n_val:
                    net.eval()
                    with torch.no_grad():
                        v, _ = self.loss(net, y[val], obs[val], hi, sample=False)
                    val_losses.append(float(v))
                else:
                    val_losses.append(losses[-1])
                early.record(epoch, val_losses[-1])
                lrs.append(float(opt.lr))
                # decay on a plateau of the validation loss, after warm-up (the objective is fixed then)
                if epoch >= self.warmup_epochs and epoch - max(early.best_epoch, last_decay[0]) >= self.lr_patience:
                    opt.lr = max(opt.lr * self.lr_decay, self.lr_min)
                    last_decay[0] = epoch
                return {"loss": f"{losses[-1]:.4g}", "val": f"{val_losses[-1]:.4g}"}

            try:
                train(step, batches, self.epochs, on_step=on_step, on_epoch=on_epoch, progress=self.progress,
                      desc="LFADS", parameters=lambda: params, energy=lambda out: out, lr=self.lr, stop=early,
                      max_growth=1e6)
            except LearningDivergenceError as exc:
                self.checkpoint_ = early.checkpoint
                net.load_state_dict(early.checkpoint)
                self.network_ = net
                raise LearningDivergenceError(
                    f"LFADS: {exc} (the parameters after epoch {early.best_epoch}, the last good ones kept, are in "
                    "LFADS.checkpoint_, a state dict of LFADSNetwork)", exc.epoch, exc.batch) from exc
            best = {"state": early.checkpoint, "epoch": early.best_epoch}
            net.load_state_dict(best["state"])
            net.eval()
            self.network_ = net
            self.loss_, self.validation_loss_, self.lr_ = np.asarray(losses), np.asarray(val_losses), np.asarray(lrs)
            self.best_epoch_ = int(best["epoch"])
            self.validation_index_ = val.cpu().numpy()
            with torch.no_grad():
                x, _ = coordinated_dropout(y[tr][..., hi], obs[tr][..., hi], 0.0)
                q = net.encode_ic(x)
            collapse = collapse_diagnostics(Posterior(q.mean.double().cpu(), q.log_var.double().cpu()))
            self.kl_per_latent_ = collapse.kl
            self.active_units_ = int(collapse.n_active)
        self._heldin = hi

    def _uses_glm_readout(self) -> bool:
        return False

    def _threads(self) -> int:
        """Intra-op threads for training and inference: one on the CPU (the GRUs' matrices are small:
        on the Lorenz benchmark two threads took 0.92x the time per epoch of one on a quiet 2-core
        machine and 1.1x beside one CPU-bound process, and once, on a heavily shared machine, 30x: 6 s
        against 0.18 s for a batch of 32 trials), the current count elsewhere."""
        return 1 if self._device().type == "cpu" else torch.get_num_threads()

    def _posterior(self, net: LFADSNetwork, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rates ``(B, T, n_out)`` (counts per bin) and factors ``(B, T, n_latents)`` of encoder
        input ``x`` ``(B, T, n_in)``, each averaged over ``n_samples`` posterior draws (at the
        posterior means when ``n_samples = 0``), and the generator's last state of each draw
        ``(draws, B, G)``. Dropout off; the draws come from a generator state seeded with
        ``seed`` and forked, so the result is deterministic and the caller's stream untouched."""
        net.eval()
        with torch.no_grad(), seeded(self.seed, x.device):
            draws = [net(x, sample=True) for _ in range(self.n_samples)] or [net(x, sample=False)]
        rates = torch.stack([torch.exp(d[0]) for d in draws]).mean(0)
        return rates, torch.stack([d[1] for d in draws]).mean(0), torch.stack([d[4] for d in draws])

    def _infer(self, counts_heldin: np.ndarray, observed_heldin: np.ndarray) -> LFADSState:
        """Factors and rates of every trial from the held-in counts (:meth:`_posterior`)."""
        with threads(self._threads()):
            x = self._tensor(counts_heldin) * self._tensor(observed_heldin)
            rates, factors, h = self._posterior(self.network_, x)
        return LFADSState(factors.double().cpu().numpy(), rates.double().cpu().numpy(), h)

    def _latents(self, state: LFADSState) -> np.ndarray:
        return state.factors

    def _own_rates(self, state: LFADSState) -> np.ndarray:
        return state.rates

    def _forecast(self, state: LFADSState, n_forward: int) -> np.ndarray:
        """Rates ``(trial, n_forward, neuron)`` of the bins after the window: the generator runs on
        from each draw's last state (inputs at their prior mean 0), factors read out to every
        neuron, rates averaged over the draws."""
        with torch.no_grad(), threads(self._threads()):
            rates = [torch.exp(self.network_.run_generator(h[None], n_forward)[0]) for h in state.last_state]
        return torch.stack(rates).mean(0).double().cpu().numpy()
