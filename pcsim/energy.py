"""Prediction errors, the precision-weighted energy and its explicit gradients.

For value nodes ``x_0..x_L`` (each ``(E, B, n_l)``) the energy of one sample is

    E = sum_{l=1..L} 1/2 eps_l^T Pi_l eps_l  [+ 1/2 Pi_0 ||x_0 - m_0||^2 in generative mode]
        [- 1/2 log det Pi_l when precisions are learned]

with ``eps_l = x_l - mu_l`` and ``mu_l = f(x_{l-1}) @ W_l + b_l`` (Rao & Ballard 1999;
Friston 2005; Bogacz 2017). Gradients here are the explicit local expressions: the
gradient at ``x_l`` uses only ``eps_l`` and the error of the layer ``x_l`` predicts.
"""

from __future__ import annotations

import torch

from .network import PCNetwork

Tensor = torch.Tensor


def predictions(net: PCNetwork, x: list[Tensor]) -> list[Tensor | None]:
    """Predictions ``[None, mu_1, ..., mu_L]`` (``mu_l``: ``(E, B, n_l)``) from value nodes ``x``."""
    mus: list[Tensor | None] = [None]
    for k in range(net.depth):
        mus.append(torch.baddbmm(net.biases[k], net.activation(k).f(x[k]), net.weights[k]))
    return mus


def prediction_errors(net: PCNetwork, x: list[Tensor]) -> list[Tensor | None]:
    """Errors ``[eps_0, eps_1, ..., eps_L]``, each ``(E, B, n_l)``.

    ``eps_0 = x_0 - prior_mean`` in generative mode and ``None`` in discriminative mode
    (the input is clamped and carries no energy).
    """
    mus = predictions(net, x)
    eps: list[Tensor | None] = [x[0] - net.prior_mean if net.mode == "generative" else None]
    eps += [x[l] - mus[l] for l in range(1, net.depth + 1)]
    return eps


def layer_energies(net: PCNetwork, x: list[Tensor]) -> Tensor:
    """Energy of each layer and sample, ``(E, B, L+1)``; column 0 is the prior term (0 if discriminative).

    Includes ``-1/2 log det Pi_l`` per layer when ``net.learn_precision`` is set, so the
    total is the negative log joint density up to a constant.
    """
    eps = prediction_errors(net, x)
    E, B = x[-1].shape[:2]
    out = x[-1].new_zeros(E, B, net.depth + 1)
    if eps[0] is not None:
        out[..., 0] = 0.5 * net.prior_log_precision.exp()[..., 0] * (eps[0] ** 2).sum(-1)
    for l in range(1, net.depth + 1):
        lp = net.log_precision[l - 1]
        out[..., l] = 0.5 * (lp.exp() * eps[l] ** 2).sum(-1)
        if net.learn_precision:
            n = net.sizes[l]
            logdet = lp.sum(-1) if lp.shape[-1] == n else lp[..., 0] * n
            out[..., l] = out[..., l] - 0.5 * logdet
    return out


def energy(net: PCNetwork, x: list[Tensor]) -> Tensor:
    """Total energy per ensemble member and sample, ``(E, B)``."""
    return layer_energies(net, x).sum(-1)


def value_gradients(net: PCNetwork, x: list[Tensor]) -> list[Tensor]:
    """Explicit ``dE/dx_l`` for every layer ``l = 0..L`` (clamped or not), each ``(E, B, n_l)``.

    ``dE/dx_l = Pi_l eps_l - f'(x_l) * ((Pi_{l+1} eps_{l+1}) @ W_{l+1}^T)``: the node's own
    error pushes it towards its prediction, the error it causes one layer down pulls it back.
    """
    eps = prediction_errors(net, x)
    pis = net.precision()
    peps = [None if eps[0] is None else net.prior_log_precision.exp() * eps[0]]
    peps += [pis[l - 1] * eps[l] for l in range(1, net.depth + 1)]
    grads = []
    for l in range(net.depth + 1):
        g = peps[l] if peps[l] is not None else torch.zeros_like(x[l])
        if l < net.depth:
            act = net.activation(l)
            fx = act.f(x[l])
            g = g - act.df(x[l], fx) * torch.bmm(peps[l + 1], net.weights[l].transpose(1, 2))
        grads.append(g)
    return grads


def output_loss(net: PCNetwork, output: Tensor, target: Tensor) -> Tensor:
    """The backprop loss matching the output energy: ``1/2 (y - out)^T Pi_L (y - out)`` averaged over the batch, ``(E,)``."""
    return 0.5 * (net.log_precision[-1].exp() * (target - output) ** 2).sum(-1).mean(-1)


def parameter_gradients(net: PCNetwork, peps: list[Tensor | None], fx: list[Tensor], eps: list[Tensor | None] | None = None) -> list[Tensor]:
    """Batch-mean ``dE/dtheta`` from local quantities, ordered as ``net.parameters()``.

    ``peps[l]`` ``(E, B, n_l)`` are precision-weighted errors, ``fx[l]`` ``(E, B, n_l)`` the
    pre-synaptic activities; ``eps`` (unweighted errors) is needed only for precision
    learning. Each weight gradient is one Hebbian outer product summed over the batch.
    """
    return hebbian_gradients(gradient_spec(net), peps, fx, eps)


def gradient_spec(net: PCNetwork) -> tuple:
    """What the parameter gradients need to know of ``net`` besides the errors, as a hashable
    ``(sizes, mode, learn_precision, scalar-precision flag per layer)`` (compiled code keys on it)."""
    return (tuple(net.sizes), net.mode, bool(net.learn_precision), tuple(lp.shape[-1] == 1 for lp in net.log_precision))


def hebbian_gradients(spec: tuple, peps: list, fx: list, eps: list | None = None) -> list[Tensor]:
    """:func:`parameter_gradients` given ``spec = gradient_spec(net)`` instead of the network."""
    sizes, mode, learn_precision, scalar = spec
    L = len(sizes) - 1
    B = peps[L].shape[1]
    gW = [torch.bmm(fx[k].transpose(1, 2), peps[k + 1]).mul_(-1.0 / B) for k in range(L)]
    gb = [peps[k + 1].mean(1, keepdim=True).neg_() for k in range(L)]
    grads = gW + gb
    if learn_precision:
        if eps is None:
            raise ValueError("precision learning needs the unweighted errors `eps`")
        for k in range(L):
            sq = (peps[k + 1] * eps[k + 1]).mean(1, keepdim=True)  # Pi eps^2, batch mean, (E,1,n)
            if scalar[k]:
                grads.append(0.5 * (sq.sum(-1, keepdim=True) - sizes[k + 1]))
            else:
                grads.append(0.5 * (sq - 1.0))
    if mode == "generative":
        grads.append(peps[0].mean(1, keepdim=True).neg_())
    return grads
