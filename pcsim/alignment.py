"""Gradient alignment: how close local PC updates come to backprop's gradients.

For one batch, each layer's PC update ``dE/dtheta_l`` (weights and bias of layer ``l``,
flattened) divided by the nudge ``beta`` is compared with the backprop gradient
``dL/dtheta_l`` of the twin at the same weights:

    cosine_l = <g_pc, g_bp> / (|g_pc| |g_bp|),   rel_error_l = |g_pc / beta - g_bp| / |g_bp|

As ``beta -> 0`` at equilibrium, standard PC's update tends to the backprop gradient
(Whittington & Bogacz 2017; Millidge et al. 2022); the fixed-prediction rule matches at any beta.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from .arguments import check_number, check_numbers
from .errors import ConfigError
from .inference import InferenceConfig, InferenceStep, relax
from .network import PCNetwork
from .energy import parameter_gradients
from .rules import FixedPredictionPC, StandardPC, _training_state, nudged
from .twin import BackpropTwin

Tensor = torch.Tensor


def _per_layer(net: PCNetwork, grads: list[Tensor]) -> list[Tensor]:
    """Flatten weight and bias gradient of each layer into one ``(E, n_params_l)`` vector."""
    L = net.depth
    E = net.ensemble
    return [torch.cat([grads[k].reshape(E, -1), grads[L + k].reshape(E, -1)], 1) for k in range(L)]


def compare_gradients(net: PCNetwork, pc_grads: list[Tensor], bp_grads: list[Tensor], nudge: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and relative error per member and layer, each ``(E, L)``, of ``pc_grads / nudge`` against ``bp_grads``.

    Both are undefined where a gradient is zero and come back NaN there, never a number: a
    saturated network whose PC update and backprop gradient both vanish has relative error
    0/0, not 0 ("perfect agreement"); a zero backprop gradient with a non-zero PC update has
    relative error inf; the cosine needs both vectors non-zero.
    """
    cos, rel = [], []
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    for a, b in zip(_per_layer(net, pc_grads), _per_layer(net, bp_grads)):
        a = a.double() / nudge
        b = b.double()
        na, nb = a.norm(dim=1), b.norm(dim=1)
        c = (a * b).sum(1) / (na * nb)
        cos.append(torch.where((na > 0) & (nb > 0), c, nan.to(c.device)))
        diff = (a - b).norm(dim=1)
        rel.append(torch.where(nb > 0, diff / nb, torch.where(diff > 0, torch.inf, nan.to(diff.device))))
    return torch.stack(cos, 1).cpu().numpy(), torch.stack(rel, 1).cpu().numpy()


def _layer_coord(net: PCNetwork) -> tuple:
    """The ``layer`` coordinate ``l = 1..L`` of per-layer alignment (the prediction layer, weights ``W_l``)."""
    return ("layer", np.arange(1, net.depth + 1), {"long_name": "prediction layer l (weights W_l)", "units": "1"})


def _dataset(cos: np.ndarray, rel: np.ndarray, dims: tuple[str, ...], coords: dict) -> xr.Dataset:
    ds = xr.Dataset(
        {
            "cosine": (dims, cos, {"long_name": "cosine similarity of PC update and BP gradient", "units": "1"}),
            "rel_error": (dims, rel, {"long_name": "relative error |g_pc/beta - g_bp| / |g_bp|", "units": "1"}),
        },
        coords=coords,
    )
    return ds


def gradient_alignment(
    net: PCNetwork,
    inputs: Tensor,
    target: Tensor,
    *,
    rule: str = "pc",
    inference: InferenceConfig = InferenceConfig(),
    nudge: float = 1.0,
) -> xr.Dataset:
    """Per-layer alignment of one rule's update with backprop on one batch.

    ``inputs`` ``(B, n_0)``, ``target`` ``(B, n_L)``; ``rule`` is ``"pc"`` (standard PC relaxed
    with ``inference``) or ``"fpa"`` (fixed prediction). Returns a Dataset with ``cosine`` and
    ``rel_error`` over dims ``(ensemble, layer)``; layer ``l = 1..L`` is the prediction layer.
    """
    nudge = check_number("nudge", nudge, gt=0)
    if rule not in ("pc", "fpa"):
        raise ConfigError(f"gradient_alignment compares rule 'pc' or 'fpa' with backprop, got {rule!r}")
    r = StandardPC(inference, nudge) if rule == "pc" else FixedPredictionPC(None, nudge)
    pc, _ = r.gradients(net, inputs, target)
    bp = BackpropTwin(net).gradients(inputs, target)
    cos, rel = compare_gradients(net, pc, bp, nudge)
    return _dataset(cos, rel, ("ensemble", "layer"), {"layer": _layer_coord(net)})


def alignment_sweep(
    net: PCNetwork,
    inputs: Tensor,
    target: Tensor,
    *,
    steps: Sequence[int],
    nudges: Sequence[float] = (1.0,),
    inference: InferenceConfig = InferenceConfig(),
) -> xr.Dataset:
    """Standard-PC alignment as a function of inference steps ``T`` and nudge ``beta``.

    One relaxation of ``max(steps)`` steps per nudge; the local update is read off at each
    requested step count. Returns ``cosine``/``rel_error`` with dims
    ``(nudge, steps, ensemble, layer)``.
    """
    steps = sorted(check_numbers("steps", steps, integer=True, ge=0))
    nudges = check_numbers("nudges", nudges, gt=0)
    if not steps or not nudges:
        raise ConfigError(f"steps and nudges must not be empty, got steps={steps}, nudges={nudges}")
    bp = BackpropTwin(net).gradients(inputs, target)
    weights_only = replace(net, spec=replace(net.spec, learn_precision=False))  # compare W and b; precisions are not in the twin
    cos = np.zeros((len(nudges), len(steps), net.ensemble, net.depth))
    rel = np.zeros_like(cos)
    for i, beta in enumerate(nudges):
        wanted = {s: j for j, s in enumerate(steps)}
        got: dict[int, list[Tensor]] = {}

        def grab(step: InferenceStep) -> None:
            if step.t in wanted:
                got[step.t] = parameter_gradients(weights_only.spec, step.peps, step.fx)

        cfg = replace(inference, steps=steps[-1], record=False, tol=0.0)
        view = nudged(weights_only, float(beta))
        r = relax(view, _training_state(view, inputs, target, None), cfg, on_step=grab)
        got[steps[-1]] = parameter_gradients(weights_only.spec, r.peps, r.fx)
        for s, j in wanted.items():
            cos[i, j], rel[i, j] = compare_gradients(net, got[s], bp, float(beta))
    coords = {"nudge": ("nudge", np.asarray(nudges, float), {"long_name": "output precision scale beta (nudge)", "units": "1"}),
              "steps": ("steps", np.asarray(steps), {"long_name": "inference steps T", "units": "1"}),
              "layer": _layer_coord(net)}
    return _dataset(cos, rel, ("nudge", "steps", "ensemble", "layer"), coords)
