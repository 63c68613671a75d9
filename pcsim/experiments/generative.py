"""Generative baselines beside predictive coding on one data set: every model, the same split, the same metrics.

Models (``[training] models``): standard PC (``pc``), hybrid amortised PC (``hybrid_pc``,
Tschantz et al. 2023), Monte Carlo PC (``mcpc``, Oliviers, Bogacz & Meulemans 2024), the VAE
(``vae``, Kingma & Welling 2014), its importance-weighted bound (``iwae``, Burda et al. 2016),
a coupling flow (``flow``, zuko RealNVP/NSF) and a Helmholtz machine trained by reweighted
wake-sleep (``helmholtz``, Bornschein & Bengio 2015). Every model with a decoder has the
generative path ``(latent_dim, *hidden, D)`` of ``[decoder]`` with the same activation
(for PC the hidden layers are free value nodes, so its latent is ``latent_dim + sum(hidden)``
wide; for the VAE and the Helmholtz machine they are deterministic). All are trained on the
same training split for the same ``epochs``, ``batch_size`` and ``lr``, seeded by ``seed``.

Data (``[data] dataset``): scikit-learn's 8x8 digits, uniformly dequantised
(:func:`pcsim.generative.data.dequantise`, train and test with their own seeds), so that
``NLL = -(log p(x_deq) + log_jacobian)``, ``log_jacobian = -64 log 17``, is an upper bound on
the negative log-probability of the discrete images (nats per example); or MNIST-1D from its
offline generator (continuous, ``log_jacobian = 0``). Every metric is computed on the same
(dequantised) test split by :mod:`pcsim.generative.metrics`.

Per model: test NLL with its Monte Carlo standard error (``nll_samples`` importance samples;
exact for the flow), ELBO, reconstruction MSE, completion MSE on the hidden bottom half,
Fréchet distance of ``n_generated`` samples in the features of a fixed classifier trained on
the real training split, linear-probe accuracy of the latent means, active units, seconds per
epoch and per inference (``encode`` of the test set). The amortisation gap (Cremer et al.
2018) of every latent-variable model on ``gap_examples`` test examples, and, for the PC
models, the ELBO of the Laplace posterior after ``T`` inference steps with the seconds per
example that relaxation takes, for every ``T`` of ``[evaluation] steps``.

Same decoder (``summary["same_decoder"]``, ``results.nc`` ``same_decoder_elbo (start, T)``): the
trained VAE's own decoder ``z -> hidden -> x`` (hidden layers deterministic, the VAE's model)
with PC's inference on it, :func:`pcsim.generative.metrics.iterative_elbo`: Euler steps of
``same_decoder_step`` down ``-log p(x, z)`` in ``z`` from the prior mean (plain PC's start) and from the
encoder's mean (hybrid PC's start), the Laplace ELBO after each ``T``, beside the encoder's
amortised ELBO on the same examples and noise; ``gap`` is the prior start's ELBO at the largest
``T`` minus the amortised one, and ``steps_to_amortised`` the least ``T`` of ``steps`` at which
each start reaches the amortised ELBO.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import xarray as xr

from ..config import ExperimentConfig
from ..errors import InferenceDivergenceError, LearningDivergenceError
from ..registry import ExperimentResult, RunContext

ModelName = Literal["pc", "hybrid_pc", "mcpc", "vae", "iwae", "flow", "helmholtz"]
PC_MODELS = ("pc", "hybrid_pc", "mcpc")
Activation = Literal["tanh", "relu", "sigmoid", "linear"]


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """``dataset``: ``digits`` (dequantised when ``dequantise``) or ``mnist1d`` (``num_samples``
    generated offline); ``test_fraction`` held out, stratified by class with ``split_seed``;
    ``max_train``/``max_test`` > 0 keep only that many examples of a split (quick runs, tests)."""

    dataset: Literal["digits", "mnist1d"] = "digits"
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})
    split_seed: int = field(default=0, metadata={"ge": 0})
    num_samples: int = field(default=4000, metadata={"ge": 20})
    dequantise: bool = True
    max_train: int = field(default=0, metadata={"ge": 0})
    max_test: int = field(default=0, metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class DecoderSection:
    """The generative path every model with a decoder shares: ``latent_dim`` top causes, ``hidden``
    widths from the top down, ``activation`` (applied to every pre-synaptic layer, the latent too)."""

    latent_dim: int = field(default=8, metadata={"ge": 1})
    hidden: tuple[int, ...] = field(default=(64,), metadata={"ge": 1})
    activation: Activation = "tanh"


@dataclass(frozen=True, kw_only=True)
class TrainingSection:
    """``models`` to compare, each trained ``epochs`` passes of minibatches of ``batch_size`` with
    Adam of step ``lr``, once per seed of ``seeds`` (weights, batch order, noise; the split is
    fixed by ``[data] split_seed``): every metric is reported per seed and as mean +- sd over them;
    an empty list means the config's ``seed`` alone."""

    models: tuple[ModelName, ...] = field(default=("pc", "hybrid_pc", "mcpc", "vae", "iwae", "flow", "helmholtz"),
                                          metadata={"nonempty": True})
    epochs: int = field(default=20, metadata={"ge": 1})
    batch_size: int = field(default=64, metadata={"ge": 1})
    lr: float = field(default=1e-3, metadata={"gt": 0})
    seeds: tuple[int, ...] = field(default=(), metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class PCSection:
    """PC's inference: ``inference_steps`` T Euler steps of ``dt/tau`` (ms) when training and
    encoding (``hybrid_steps`` for hybrid PC, which starts from its amortiser, trained with
    ``amortiser_lr``); ``learn_precision`` of the prediction errors (the data's noise level, as the
    VAE learns its ``sigma``); Monte Carlo PC: ``mc_samples`` Langevin samples after ``burn_in`` steps;
    ``precondition``: the relaxation's step scaling (:class:`pcsim.inference.InferenceConfig`;
    ``"curvature"``, each layer's step divided by its curvature bound, is stable for ``dt/tau < 1``
    however far the learned precisions and weights grow); ``precision_update``: the learned
    precisions' rule, at the mode (PC's) or the variational-Laplace M-step
    (:class:`pcsim.generative.pc.PCGenerative`; Monte Carlo PC always averages over its samples)."""

    inference_steps: int = field(default=20, metadata={"ge": 0})
    hybrid_steps: int = field(default=5, metadata={"ge": 0})
    dt: float = field(default=1.0, metadata={"gt": 0, "units": "ms"})
    tau: float = field(default=10.0, metadata={"gt": 0, "units": "ms"})
    precondition: Literal["none", "precision", "curvature"] = "curvature"
    precision_update: Literal["mode", "laplace"] = "mode"
    learn_precision: bool = True
    amortiser_lr: float = field(default=1e-2, metadata={"gt": 0})
    mc_samples: int = field(default=5, metadata={"ge": 1})
    burn_in: int = field(default=5, metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class BaselineSection:
    """``iw_samples`` K of the IWAE bound; ``sigma`` of the VAEs' Gaussian observation noise;
    ``flow`` kind (``realnvp``/``nsf``) with ``flow_transforms`` coupling layers of ``flow_hidden``
    widths; Helmholtz machine: ``recognition_hidden`` widths and ``rws_samples`` K of reweighted wake-sleep."""

    iw_samples: int = field(default=5, metadata={"ge": 2})
    sigma: Literal["scalar", "per_dimension"] = "scalar"
    flow: Literal["realnvp", "nsf"] = "realnvp"
    flow_transforms: int = field(default=4, metadata={"ge": 1})
    flow_hidden: tuple[int, ...] = field(default=(64, 64), metadata={"ge": 1, "nonempty": True})
    recognition_hidden: tuple[int, ...] = field(default=(64,), metadata={"ge": 1})
    rws_samples: int = field(default=5, metadata={"ge": 1})


@dataclass(frozen=True, kw_only=True)
class EvaluationSection:
    """``nll_samples`` importance samples per test example and ``elbo_samples`` ELBO draws;
    completion of the hidden bottom half (the right half of a sequence) by ``completion_steps``
    Adam steps of ``completion_lr``; amortisation gap on the first ``gap_examples`` test examples
    (``gap_steps`` per-example steps) and PC's ELBO after each of ``steps`` inference steps;
    ``same_decoder_step``: the Euler step ``dt/tau`` of PC's inference on the VAE's decoder (its
    curvature grows as the VAE's ``sigma`` shrinks: 0.03 diverges on digits after 300 epochs);
    ``n_generated`` samples for the Fréchet distance, in the features of a classifier trained for
    ``classifier_max_iter`` epochs on the real training split, scored (and shown) as the decoder
    mean ``E[x | z]`` at each sampled latent unless ``sample_noise`` (then with the observation noise,
    which at a learned ``sigma`` dominates the distance); ``n_show`` examples per figure."""

    nll_samples: int = field(default=100, metadata={"ge": 2})
    elbo_samples: int = field(default=10, metadata={"ge": 1})
    completion_steps: int = field(default=100, metadata={"ge": 0})
    completion_lr: float = field(default=0.05, metadata={"gt": 0})
    gap_examples: int = field(default=200, metadata={"ge": 2})
    gap_steps: int = field(default=200, metadata={"ge": 0})
    steps: tuple[int, ...] = field(default=(0, 1, 2, 5, 10, 20, 50, 100), metadata={"ge": 0, "nonempty": True})
    same_decoder_step: float = field(default=0.01, metadata={"gt": 0})
    n_generated: int = field(default=500, metadata={"ge": 2})
    classifier_max_iter: int = field(default=300, metadata={"ge": 1})
    sample_noise: bool = False
    n_show: int = field(default=8, metadata={"ge": 1})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``generative`` experiment (``configs/generative_digits.toml``, ``configs/generative_mnist1d.toml``)."""

    data: DataSection = field(default_factory=DataSection)
    decoder: DecoderSection = field(default_factory=DecoderSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    pc: PCSection = field(default_factory=PCSection)
    baselines: BaselineSection = field(default_factory=BaselineSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)


# --------------------------------------------------------------------------- data and models
def load_data(section: DataSection):
    """The split and ``(x_train, x_test)`` the models see (dequantised digits, or MNIST-1D as is)."""
    from ..generative import data as gd

    if section.dataset == "digits":
        data = gd.digits(section.test_fraction, section.split_seed)
    else:
        data = gd.mnist1d(section.num_samples, section.test_fraction, section.split_seed)
    if section.max_train or section.max_test:
        tr = slice(section.max_train or None)
        te = slice(section.max_test or None)
        data = replace(data, x_train=data.x_train[tr], labels_train=data.labels_train[tr],
                       x_test=data.x_test[te], labels_test=data.labels_test[te])
    if data.levels is not None and section.dequantise:
        # independent noise for the two halves; the seeds follow from split_seed
        x_train = gd.dequantise(data.x_train, data.levels, 2 * section.split_seed)
        x_test = gd.dequantise(data.x_test, data.levels, 2 * section.split_seed + 1)
        return data, x_train, x_test, data.log_jacobian
    return data, data.x_train, data.x_test, 0.0


def build_model(name: str, config: Config, device: str):
    """The unfitted model ``name`` with the config's shared decoder and training settings."""
    from ..generative.flow import Flow
    from ..generative.helmholtz import HelmholtzMachine
    from ..generative.pc import HybridPC, PCGenerative
    from ..generative.vae import VAE

    dec, tr, pcs, bl = config.decoder, config.training, config.pc, config.baselines
    common = dict(epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr, seed=config.seed, device=device)
    if name in PC_MODELS:
        pc_kw = dict(learn_precision=pcs.learn_precision, dt=pcs.dt, tau=pcs.tau, precondition=pcs.precondition,
                     **common)
        sizes = lambda D: (dec.latent_dim, *dec.hidden, D)  # noqa: E731
        if name == "hybrid_pc":
            return lambda D: HybridPC(sizes(D), dec.activation, inference_steps=pcs.hybrid_steps,
                                      amortiser_lr=pcs.amortiser_lr, **pc_kw)
        extra = (dict(learning="mcpc", mc_samples=pcs.mc_samples, burn_in=pcs.burn_in) if name == "mcpc"
                 else dict(precision_update=pcs.precision_update))
        return lambda D: PCGenerative(sizes(D), dec.activation, inference_steps=pcs.inference_steps, **extra, **pc_kw)
    if name in ("vae", "iwae"):
        K = bl.iw_samples if name == "iwae" else 1
        return lambda D: VAE(dec.latent_dim, dec.hidden, dec.activation, sigma=bl.sigma, iw_samples=K, **common)
    if name == "flow":
        return lambda D: Flow(bl.flow, bl.flow_transforms, bl.flow_hidden, **common)
    return lambda D: HelmholtzMachine((dec.latent_dim, *dec.hidden, D), dec.activation,
                                      recognition_hidden=bl.recognition_hidden, reweighted=True,
                                      samples=bl.rws_samples, **common)


def _training_loss(model) -> np.ndarray:
    """The model's own training objective per epoch, as a loss (nats per example; PC: its relaxed energy)."""
    for attr, sign in (("loss_", 1.0), ("objective_", -1.0), ("energy_", 1.0)):
        if hasattr(model, attr):
            return sign * np.asarray(getattr(model, attr), dtype=float)
    raise AttributeError(f"{type(model).__name__} records no training objective")


def _seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def evaluate(name: str, model, fit_seconds: float, data, x_train, x_test, log_jacobian: float, classifier,
             config: Config) -> dict:
    """Every metric of one fitted model on the test split (module docstring)."""
    from ..generative import metrics as M

    ev, n_show = config.evaluation, config.evaluation.n_show
    out: dict = {}
    scores = M.likelihood_scores(model, x_test, samples=ev.nll_samples, elbo_samples=ev.elbo_samples,
                                 seed=config.seed, log_jacobian=log_jacobian)
    out.update(nll=scores.nll, nll_stderr=scores.nll_stderr, elbo=scores.elbo)
    with torch.no_grad():
        q, out["seconds_per_inference"] = _seconds(lambda: model.encode(x_test))
        recon = model.decode(q.mean)
    out["reconstruction_mse"] = float(((recon - x_test) ** 2).mean())
    image_shape = data.extra.get("image_shape")
    observed = M.half_mask(x_test.shape[0], x_test.shape[1], "bottom", image_shape)
    completion = M.pattern_completion(model, x_test, observed, steps=ev.completion_steps, lr=ev.completion_lr)
    out["completion_mse"] = completion.error
    generated = model.sample(ev.n_generated, seed=config.seed + 1, noise=ev.sample_noise)
    quality = M.sample_quality(classifier, x_test, generated)
    out.update(frechet_distance=quality.frechet, label_entropy=quality.label_entropy)
    out["probe_accuracy"] = M.probe_accuracy(x_train, data.labels_train, x_test, data.labels_test, model=model,
                                             seed=config.seed)
    out["active_units"] = 0 if model.exact_likelihood else M.collapse_diagnostics(q).n_active
    out["latent_width"] = int(q.mean.shape[1])
    out["seconds_per_epoch"] = fit_seconds / config.training.epochs
    out["fit_seconds"] = fit_seconds
    # amortisation gap on a subset: the encoder's ELBO against the per-example optimum of its family
    xg = x_test[:min(ev.gap_examples, x_test.shape[0])]
    if model.exact_likelihood:
        out.update(amortised_elbo=np.nan, optimised_elbo=np.nan, amortisation_gap=0.0, amortisation_gap_stderr=0.0,
                   amortised_seconds=np.nan, optimised_seconds=np.nan)
    else:
        _, enc = _seconds(lambda: model.encode(xg))
        gap, opt = _seconds(lambda: M.amortisation_gap(model, xg, steps=ev.gap_steps, seed=config.seed))
        out.update(amortised_elbo=float(gap.amortised.mean()) + log_jacobian,
                   optimised_elbo=float(gap.optimised.mean()) + log_jacobian, amortisation_gap=gap.gap,
                   amortisation_gap_stderr=gap.stderr, amortised_seconds=enc / xg.shape[0],
                   optimised_seconds=(enc + opt) / xg.shape[0])
    # PC: the ELBO of the Laplace posterior after T inference steps, and the seconds the relaxation takes
    T = config.evaluation.steps
    out["elbo_vs_steps"] = np.full(len(T), np.nan)
    out["relax_seconds"] = np.full(len(T), np.nan)
    if name in PC_MODELS:
        for i, t in enumerate(T):
            at_t = copy.copy(model).set_params(inference_steps=int(t))  # the same fitted network, T steps
            try:
                secs = min(_seconds(lambda: at_t.relax(xg, steps=int(t)))[1] for _ in range(3))  # least-disturbed of 3
                elbo = float(at_t.elbo(xg, samples=ev.elbo_samples, seed=config.seed).mean()) + log_jacobian
            except InferenceDivergenceError as exc:
                # Euler steps of dt/tau that were stable for the training T can diverge over longer
                # relaxations once the precisions have grown: a finding, recorded, not a failed run
                out.setdefault("diverged", []).append({"T": int(t), "error": str(exc).split(";")[0]})
                continue
            out["elbo_vs_steps"][i] = elbo
            out["relax_seconds"][i] = secs / xg.shape[0]
    out["samples"] = generated[:n_show].numpy()
    out["reconstructions"] = recon[:n_show].numpy()
    out["completions"] = completion.completed[:n_show].numpy()
    out["observed"] = observed[:n_show].numpy()
    return out


_STARTS = ("prior", "amortised")  # plain PC's start and hybrid PC's


def same_decoder(vae, x_test, log_jacobian: float, config: Config) -> dict:
    """PC's iterative inference on the trained VAE's decoder against its encoder (module docstring),
    on the gap subset; a relaxation that diverges leaves NaN from that start and is named in ``diverged``."""
    from ..generative import metrics as M

    ev = config.evaluation
    xg = x_test[:min(ev.gap_examples, x_test.shape[0])]
    out: dict = {"elbo_by_T": {}, "diverged": {}, "step_size": ev.same_decoder_step}
    amortised = np.nan
    for start in _STARTS:
        try:
            r = M.iterative_elbo(vae, xg, ev.steps, ev.same_decoder_step, start=start,
                                 samples=max(ev.elbo_samples, 64), seed=config.seed)
        except InferenceDivergenceError as exc:
            out["elbo_by_T"][start] = np.full(len(ev.steps), np.nan)
            out["diverged"][start] = str(exc).split(";")[0]
            continue
        by_t = dict(zip(r.steps.tolist(), (r.elbo.mean(1) + log_jacobian).tolist()))
        out["elbo_by_T"][start] = np.array([by_t[int(t)] for t in ev.steps])
        amortised = float(r.amortised.mean()) + log_jacobian
    out["amortised_elbo"] = amortised
    last = int(np.argmax(ev.steps))
    out["gap"] = float(out["elbo_by_T"]["prior"][last] - amortised)
    out["gap_from_amortised"] = float(out["elbo_by_T"]["amortised"][last] - amortised)
    order = np.argsort(ev.steps)
    out["steps_to_amortised"] = {k: next((int(ev.steps[i]) for i in order if v[i] >= amortised), None)
                                 for k, v in out["elbo_by_T"].items()}
    return out


# --------------------------------------------------------------------------- the run
_SCALARS = {  # name: (units, long_name)
    "nll": ("nats/example", "test negative log-likelihood (importance-weighted; exact for the flow)"),
    "nll_stderr": ("nats/example", "Monte Carlo standard error of the test NLL"),
    "elbo": ("nats/example", "test evidence lower bound of the model's own posterior"),
    "reconstruction_mse": ("1", "reconstruction mean squared error per feature"),
    "completion_mse": ("1", "completion mean squared error on the hidden half"),
    "frechet_distance": ("1", "Frechet distance of samples in the fixed classifier's features"),
    "label_entropy": ("nats", "classifier label entropy per sample"),
    "probe_accuracy": ("1", "linear-probe test accuracy of the latent means"),
    "active_units": ("1", "active latent units (posterior-mean variance > 0.01)"),
    "latent_width": ("1", "width of the latent the posterior covers"),
    "seconds_per_epoch": ("s", "training wall time per epoch"),
    "fit_seconds": ("s", "training wall time"),
    "seconds_per_inference": ("s", "wall time of encode on the test set"),
    "amortised_elbo": ("nats/example", "ELBO of the encoder on the gap subset"),
    "optimised_elbo": ("nats/example", "ELBO after per-example optimisation of the same family"),
    "amortisation_gap": ("nats/example", "amortisation gap (optimised minus amortised ELBO)"),
    "amortisation_gap_stderr": ("nats/example", "standard error of the amortisation gap over examples"),
    "amortised_seconds": ("s/example", "encoder wall time per example on the gap subset"),
    "optimised_seconds": ("s/example", "per-example optimisation wall time per example"),
}


def _fit_all(config: Config, ctx: RunContext, names, data, x_train, x_test, log_jacobian, classifier, bar):
    """Every model of ``names`` fitted and scored with ``config.seed``: (results, losses, failed, same decoder)."""
    D = data.n_features
    results, losses, failed, same = {}, {}, {}, None
    for name in names:
        model = build_model(name, config, ctx.device)(D)
        try:
            _, fit_s = _seconds(lambda: model.fit(x_train))
        except LearningDivergenceError as exc:
            # one baseline's blow-up must not hide the others: it is reported (summary 'failed',
            # a warning, NaN in every metric of that model), never silently continued
            failed[name] = str(exc)
            warnings.warn(f"generative: {name} (seed {config.seed}) diverged in training and is left out of the "
                          f"table: {exc}", stacklevel=2)
            bar.update()
            continue
        losses[name] = _training_loss(model)
        results[name] = evaluate(name, model, fit_s, data, x_train, x_test, log_jacobian, classifier, config)
        if name == "vae":
            same = same_decoder(model, x_test, log_jacobian, config)
        bar.update()
    return results, losses, failed, same


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Fit every model on the same split once per seed; return the metrics ``(model, seed)``, curves
    ``(model, seed, epoch)`` and ``(model, seed, T)``, and the first seed's samples and reconstructions."""
    from tqdm.auto import tqdm

    from ..generative import metrics as M

    t_run = time.perf_counter()
    data, x_train, x_test, log_jacobian = load_data(config.data)
    classifier = M.feature_classifier(x_train, data.labels_train, seed=config.seed,
                                        max_iter=config.evaluation.classifier_max_iter)
    names = list(dict.fromkeys(config.training.models))
    seeds = list(dict.fromkeys(config.training.seeds)) or [config.seed]
    per_seed = []
    with tqdm(total=len(names) * len(seeds), desc="generative models x seeds", disable=not ctx.progress) as bar:
        for seed in seeds:
            per_seed.append(_fit_all(replace(config, seed=seed), ctx, names, data, x_train, x_test, log_jacobian,
                                     classifier, bar))
    ok = next((r[n] for r, *_ in per_seed for n in names if n in r), None)
    if ok is None:
        raise LearningDivergenceError("every model diverged in training: " + "; ".join(
            f"{k} (seed {s}): {v}" for s, (_, _, failed, _) in zip(seeds, per_seed) for k, v in failed.items()))
    for results, losses, failed, _ in per_seed:
        for name in failed:  # NaN rows of the right shapes for the models that failed
            results[name] = {k: (np.full_like(np.asarray(v, dtype=float), np.nan) if k != "observed" else v)
                             for k, v in ok.items() if k != "diverged"}
            losses[name] = np.full(config.training.epochs, np.nan)
    ds = _dataset(config, names, seeds, [r for r, *_ in per_seed], [l for _, l, *_ in per_seed], data, x_test,
                  log_jacobian)
    sames = [s for *_, s in per_seed]
    if all(s is not None for s in sames):
        ds["same_decoder_elbo"] = xr.Variable(("seed", "start", "T"), np.stack(
            [np.stack([s["elbo_by_T"][k] for k in _STARTS]) for s in sames]), {
            "units": "nats/example", "long_name": "Laplace ELBO after T steps of PC inference on the VAE's decoder"})
        ds["same_decoder_amortised_elbo"] = xr.Variable("seed", np.array([s["amortised_elbo"] for s in sames]), {
            "units": "nats/example", "long_name": "the VAE encoder's amortised ELBO on the same examples"})
        ds = ds.assign_coords(start=xr.Variable("start", list(_STARTS), {"units": "", "long_name": "where inference starts"}))
    summary = {
        "models": {n: _seed_summary([r[n] for r, *_ in per_seed]) for n in names},
        "seeds": seeds,
        "failed": {f"{k} (seed {s})": v for s, (_, _, failed, _) in zip(seeds, per_seed) for k, v in failed.items()},
        "diverged_relaxations": {f"{n} (seed {s})": r[n]["diverged"] for s, (r, *_) in zip(seeds, per_seed)
                                 for n in names if r[n].get("diverged")},
        "dataset": data.name, "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]),
        "log_jacobian": log_jacobian, "classifier_train_accuracy": classifier.train_accuracy,
        "samples_scored": ds.attrs["samples_scored"],
        "wall_seconds": time.perf_counter() - t_run,
    }
    if all(s is not None for s in sames):
        first = sames[0]
        gaps = np.array([s["gap"] for s in sames])
        summary["same_decoder"] = {
            **first, "elbo_by_T": {"T": list(config.evaluation.steps),
                                   **{k: v.tolist() for k, v in first["elbo_by_T"].items()}},
            "gap_mean": float(gaps.mean()), "gap_sd": _sd(gaps),
            "per_seed": [{"seed": seed, "gap": s["gap"], "gap_from_amortised": s["gap_from_amortised"],
                          "amortised_elbo": s["amortised_elbo"], "steps_to_amortised": s["steps_to_amortised"],
                          "diverged": s["diverged"]} for seed, s in zip(seeds, sames)]}
    return ExperimentResult(ds, summary)


def _sd(values) -> float:
    """The sample standard deviation over seeds (0 for one seed; NaN where a seed failed)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if v.size > 1 else 0.0


def _seed_summary(rows: list[dict]) -> dict:
    """One model's scalars over seeds: ``{key: mean, key_sd: sd, ...}`` and ``per_seed`` lists."""
    out: dict = {}
    for key in _SCALARS:
        v = np.array([r[key] for r in rows], dtype=float)
        out[key] = float(v.mean())
        out[f"{key}_sd"] = _sd(v)
    out["per_seed"] = {key: [float(r[key]) for r in rows] for key in _SCALARS}
    return out


def _dataset(config: Config, names, seeds, results_by_seed, losses_by_seed, data, x_test, log_jacobian) -> xr.Dataset:
    """The results: every scalar ``(model, seed)``, curves ``(model, seed, epoch|T)``; samples,
    reconstructions and completions of the first seed."""
    ev = config.evaluation
    results = results_by_seed[0]
    n_show = min(ev.n_show, x_test.shape[0])
    coords = {
        "model": ("model", names, {"units": "", "long_name": "generative model"}),
        "seed": ("seed", np.asarray(seeds), {"units": "1", "long_name": "model seed (weights, batch order, noise)"}),
        "epoch": ("epoch", np.arange(1, config.training.epochs + 1), {"units": "1", "long_name": "training epoch"}),
        "T": ("T", np.asarray(ev.steps), {"units": "1", "long_name": "inference steps T"}),
        "sample": ("sample", np.arange(n_show), {"units": "1", "long_name": "generated sample index"}),
        "example": ("example", np.arange(n_show), {"units": "1", "long_name": "test example index"}),
        "feature": ("feature", np.arange(data.n_features), {"units": "1", "long_name": "feature (pixel) index"}),
    }
    ds = xr.Dataset(coords={k: xr.Variable(*v) for k, v in coords.items()})
    for key, (units, long_name) in _SCALARS.items():
        ds[key] = xr.Variable(("model", "seed"), np.array([[r[n][key] for r in results_by_seed] for n in names],
                                                          dtype=float), {"units": units, "long_name": long_name})
    loss = np.full((len(names), len(seeds), config.training.epochs), np.nan)
    for i, n in enumerate(names):
        for j, losses in enumerate(losses_by_seed):
            loss[i, j, :len(losses[n])] = losses[n]
    ds["train_loss"] = xr.Variable(("model", "seed", "epoch"), loss, {
        "units": "nats/example", "long_name": "training objective per epoch (each model's own loss; PC: relaxed energy)"})
    for key, units, long_name in (
            ("elbo_vs_steps", "nats/example", "ELBO of the Laplace posterior after T inference steps (PC models)"),
            ("relax_seconds", "s/example", "wall time of T inference steps per example (PC models)")):
        ds[key] = xr.Variable(("model", "seed", "T"), np.stack(
            [np.stack([r[n][key] for r in results_by_seed]) for n in names]), {"units": units, "long_name": long_name})
    for key, dim, long_name in (("samples", "sample", "generated samples"),
                                ("reconstructions", "example", "reconstructions of test examples"),
                                ("completions", "example", "completions of test examples (hidden half filled in)")):
        ds[key] = xr.Variable(("model", dim, "feature"), np.stack([results[n][key][:n_show] for n in names]),
                              {"units": "1", "long_name": long_name})
    ds["originals"] = xr.Variable(("example", "feature"), x_test[:n_show].numpy(),
                                  {"units": "1", "long_name": "test examples as the models see them"})
    ds["observed"] = xr.Variable(("example", "feature"), results[names[0]]["observed"][:n_show].astype(np.int8),
                                 {"units": "1", "long_name": "observed mask of the completion (1 = observed)"})
    shape = data.extra.get("image_shape")
    ds.attrs.update(dataset=data.name, n_train=int(data.x_train.shape[0]), n_test=int(x_test.shape[0]),
                    log_jacobian_nats=float(log_jacobian), image_shape=list(shape) if shape else [],
                    decoder_sizes=[config.decoder.latent_dim, *config.decoder.hidden, data.n_features],
                    samples_scored=("samples with observation noise" if ev.sample_noise else
                                    "decoder mean E[x | z] at sampled latents (no observation noise)"))
    return ds


# --------------------------------------------------------------------------- figures
def _show(ax, row, shape) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if len(shape) == 2:
        ax.imshow(np.asarray(row).reshape(shape), cmap="gray_r", vmin=0, vmax=1)
    else:
        ax.plot(np.asarray(row), lw=1)
        ax.set_ylim(-0.05, 1.05)


def plot(results: xr.Dataset) -> dict:
    """Four figures: samples per model; reconstructions and completions; test NLL with error bars;
    the amortisation gap against inference steps T with the seconds per example on a second axis."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    figs = {}
    models = [str(m) for m in results.model.values]
    shape = tuple(int(s) for s in np.atleast_1d(results.attrs.get("image_shape", []))) or (results.sizes["feature"],)
    n = results.sizes["sample"]

    fig = Figure(figsize=(1.1 * n, 1.1 * len(models) + 0.4))
    ax = fig.subplots(len(models), n, squeeze=False)
    for i, m in enumerate(models):
        for j in range(n):
            _show(ax[i, j], results.samples.sel(model=m).isel(sample=j), shape)
        ax[i, 0].set_ylabel(m, rotation=0, ha="right", va="center")
    fig.suptitle(f"{results.attrs.get('dataset', '')}: samples per model")
    figs["samples"] = fig

    n = results.sizes["example"]
    rows = [("data", results.originals), ("observed", results.originals.where(results.observed > 0))]
    rows += [(f"{m} recon", results.reconstructions.sel(model=m)) for m in models]
    rows += [(f"{m} complete", results.completions.sel(model=m)) for m in models]
    fig = Figure(figsize=(1.1 * n, 0.9 * len(rows) + 0.4))
    ax = fig.subplots(len(rows), n, squeeze=False)
    for i, (label, arr) in enumerate(rows):
        for j in range(n):
            _show(ax[i, j], arr.isel(example=j).fillna(0.0 if len(shape) == 2 else np.nan), shape)
        ax[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("reconstructions and completions of the hidden half")
    figs["reconstructions"] = fig

    fig = Figure(figsize=(1.0 + 0.8 * len(models), 3.5))
    ax = fig.subplots()
    x = np.arange(len(models))
    nseeds = results.sizes["seed"]
    for j in range(nseeds):  # every seed, and the mean +- sd over seeds
        ax.plot(x - 0.15, results.nll.isel(seed=j).values, ".", color="C0", alpha=0.5,
                label="NLL per seed" if j == 0 else None)
    sd = results.nll.std("seed", ddof=1) if nseeds > 1 else results.nll_stderr.mean("seed")
    ax.errorbar(x, results.nll.mean("seed").values, yerr=sd.values, fmt="o", capsize=4, color="C0",
                label="NLL (IW / exact), mean +- sd over seeds" if nseeds > 1 else "NLL (IW / exact) +- MC stderr")
    ax.plot(x + 0.15, -results.elbo.mean("seed").values, "x", color="C1", label="-ELBO (mean over seeds)")
    ax.set_xticks(x, models, rotation=30)
    ax.set(ylabel="nats per example", title=f"{results.attrs.get('dataset', '')}: test NLL over {nseeds} seed(s)")
    ax.legend()
    fig.tight_layout()
    figs["nll"] = fig

    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    ax2 = ax.twinx()
    T = results["T"].values
    Tplot = np.maximum(T, 0.5)  # T = 0 on the log axis
    mean = results.mean("seed")  # curves and lines: the mean over seeds
    for k, m in enumerate(models):
        curve = mean.elbo_vs_steps.sel(model=m).values
        if np.isfinite(curve).any():
            line, = ax.plot(Tplot, curve, marker="o", ms=3, label=f"{m}: ELBO after T steps")
            ax2.plot(Tplot, mean.relax_seconds.sel(model=m).values, ls=":", color=line.get_color())
    for m, style in (("vae", "C3"), ("iwae", "C4"), ("helmholtz", "C5")):
        if m in models and np.isfinite(mean.amortised_elbo.sel(model=m)):
            ax.axhline(float(mean.amortised_elbo.sel(model=m)), color=style, ls="--", label=f"{m}: amortised ELBO")
            ax.axhline(float(mean.optimised_elbo.sel(model=m)), color=style, ls="-.",
                       label=f"{m}: per-example optimised ELBO")
            ax2.axhline(float(mean.amortised_seconds.sel(model=m)), color=style, ls=":", lw=0.8)
            ax2.axhline(float(mean.optimised_seconds.sel(model=m)), color=style, ls=":", lw=1.6)
    if "same_decoder_elbo" in results:
        for start, ls in (("prior", "-"), ("amortised", "--")):
            ax.plot(Tplot, mean.same_decoder_elbo.sel(start=start).values, color="k", ls=ls, marker="s", ms=3,
                    label=f"PC inference on the VAE's decoder, from the {start}")
    ax.set(xscale="log", xlabel="inference steps T (T = 0 drawn at 0.5)", ylabel="ELBO (nats per example)",
           title="amortisation gap vs T (dotted, right: seconds per example)")
    ax2.set(yscale="log", ylabel="seconds per example")
    # the key beside the axes, never over a curve; the dotted lines (right axis) share the colours
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.2, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    figs["amortisation"] = fig
    return figs
