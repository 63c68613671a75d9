"""Prediction errors, the precision-weighted energy and its explicit gradients: the PC equations, once.

For value nodes ``x_0..x_L`` (each ``(E, B, n_l)``) the energy of one sample is

    E = sum_{l=1..L} 1/2 eps_l^T Pi_l eps_l  [+ 1/2 Pi_0 ||x_0 - m_0||^2 in generative mode]
        [- 1/2 log det Pi_l when precisions are learned]
        [+ sum_l lambda_l sum_i log(1 + x_{l,i}^2 / s^2)   (a sparse prior on chosen layers)]

with ``eps_l = x_l - mu_l`` and ``mu_l = f(x_{l-1}) @ W_l + b_l`` (Rao & Ballard 1999;
Friston 2005; Bogacz 2017). The sparse (Cauchy, kurtotic) prior on the value nodes is Rao &
Ballard's ``g(r) = alpha log(1 + r^2)`` and Olshausen & Field's (1996) sparse-coding cost
(or ``lambda_l |x_l| / s``, the L1 option); it is off (``lambda_l = 0``) unless the
network's spec sets ``sparsity``. Gradients here are the explicit local expressions: the
gradient at ``x_l`` uses only ``eps_l`` and the error of the layer ``x_l`` predicts.

Every other module (the network's feed-forward sweep, the relaxation step of
:mod:`pcsim.inference`, the learning rules, the backprop twin, the fused training step)
calls these functions; the hot paths pass pieces they already hold (frozen predictions,
activities), never a second copy of a formula. The core functions take the static
:class:`~pcsim.network.NetworkSpec` and explicit tensors so that compiled code can call them;
the ``net``-level wrappers (:func:`prediction_errors`, :func:`layer_energies`,
:func:`value_gradients`) are the convenient public surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .network import NetworkSpec, PCNetwork

Tensor = torch.Tensor


# --------------------------------------------------------------------------- predictions
def predict(fx: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The prediction ``mu_l = f(x_{l-1}) @ W_l + b_l``, ``(E, B, n_l)``, from activities ``fx`` ``(E, B, n_{l-1})``,
    ``weight`` ``(E, n_{l-1}, n_l)`` and ``bias`` ``(E, 1, n_l)``.

    A narrow layer (``n_l < 16``, one AVX-512 register) is computed as ``mu^T = W^T f^T + b^T``
    (the result a transposed view): MKL's sgemm handles a product with few output columns badly
    (2-3x slower at B x n_{l-1} x n_l = 256 x 512 x 10 on one core) and the transposed product
    has many. Below ``B n_{l-1} = 8192`` the two transposes cost more than they save."""
    if weight.shape[-1] < 16 and fx.shape[-2] * weight.shape[-2] >= 8192:
        return torch.baddbmm(bias.transpose(1, 2), weight.transpose(1, 2), fx.transpose(1, 2)).transpose(1, 2)
    return torch.baddbmm(bias, fx, weight)


def sweep(spec: "NetworkSpec", weights: Sequence[Tensor], biases: Sequence[Tensor], x0: Tensor) -> list[Tensor]:
    """The feed-forward sweep ``x_l = mu_l(x_{l-1})`` from ``x0`` ``(E, B, n_0)``: ``[x_0, ..., x_L]``.

    The one sweep: the initial state of inference (every error above layer 0 is zero there),
    the network's :meth:`~pcsim.network.PCNetwork.forward` and the backprop twin's forward pass.
    """
    xs = [x0]
    for k in range(spec.depth):
        xs.append(predict(spec.activation(k).f(xs[-1]), weights[k], biases[k]))
    return xs


def errors(spec: "NetworkSpec", weights: Sequence[Tensor], biases: Sequence[Tensor], precisions: Sequence[Tensor] | None,
           prior: tuple[Tensor, Tensor] | None, x: Sequence[Tensor], *, mu: Sequence | None = None,
           fx: Sequence | None = None) -> tuple[list, list, list]:
    """Errors ``eps``, precision-weighted errors ``peps`` and activities ``fx`` at value nodes ``x``.

    ``eps_l = x_l - mu_l`` and ``peps_l = Pi_l eps_l`` for ``l = 1..L`` (``(E, B, n_l)``);
    ``eps_0 = x_0 - m_0`` and ``peps_0 = Pi_0 eps_0`` with ``prior = (m_0, Pi_0)`` in generative
    mode, both ``None`` without a prior. ``precisions`` ``[Pi_1..Pi_L]`` (``(E, 1, n_l)`` or
    ``(E, 1, 1)``), or ``None`` when every precision is 1 (then ``peps`` is ``eps``). ``fx[l] =
    f_l(x_l)`` for ``l < L``. ``mu[l]``/``fx[l]``, where given (not None), are used as they are
    instead of being computed: frozen predictions (fixed-prediction rule) or a prediction that
    cannot change during a relaxation (``mu_1`` from a clamped input).
    """
    L = spec.depth
    acts = [fx[l] if fx is not None and fx[l] is not None else None for l in range(L)]
    eps: list = [None if prior is None else x[0] - prior[0]]
    for l in range(1, L + 1):
        m = mu[l] if mu is not None else None
        if m is None:
            if acts[l - 1] is None:
                acts[l - 1] = spec.activation(l - 1).f(x[l - 1])
            m = predict(acts[l - 1], weights[l - 1], biases[l - 1])
        eps.append(x[l] - m)
    peps: list = [None if prior is None else prior[1] * eps[0]]
    peps += eps[1:] if precisions is None else [precisions[l - 1] * eps[l] for l in range(1, L + 1)]
    return eps, peps, acts


def _network_errors(net: "PCNetwork", x: Sequence[Tensor]) -> tuple[list, list, list]:
    prior = (net.prior_mean, net.prior_log_precision.exp()) if net.mode == "generative" else None
    return errors(net.spec, net.weights, net.biases, net.precision(), prior, x)


def predictions(net: "PCNetwork", x: Sequence[Tensor]) -> list[Tensor | None]:
    """Predictions ``[None, mu_1, ..., mu_L]`` (``mu_l``: ``(E, B, n_l)``) from value nodes ``x``."""
    return [None] + [predict(net.activation(k).f(x[k]), net.weights[k], net.biases[k]) for k in range(net.depth)]


def prediction_errors(net: "PCNetwork", x: Sequence[Tensor]) -> list[Tensor | None]:
    """Errors ``[eps_0, eps_1, ..., eps_L]``, each ``(E, B, n_l)``.

    ``eps_0 = x_0 - prior_mean`` in generative mode and ``None`` in discriminative mode
    (the input is clamped and carries no energy).
    """
    return _network_errors(net, x)[0]


# --------------------------------------------------------------------------- energies
def quadratic_energy(eps: Tensor | None, peps: Tensor | None, like: Tensor) -> Tensor:
    """``1/2 eps^T Pi eps`` per sample, ``(E, B)``, from ``eps`` and ``peps = Pi eps`` (``(E, B, n)``); zeros shaped
    like ``like[..., 0]`` for a layer without energy (``eps`` None)."""
    if eps is None:
        return like.new_zeros(like.shape[:-1])
    return 0.5 * (eps * peps).sum(-1)


def quadratic_energies(eps: Sequence, peps: Sequence, like: Tensor) -> Tensor:
    """The quadratic energy of every layer and sample, ``(E, B, L+1)`` (column 0: the prior term or 0)."""
    return torch.stack([quadratic_energy(e, pe, like) for e, pe in zip(eps, peps)], -1)


def sparse_energy(x: Tensor, sparse: tuple[float, float, str] | None) -> Tensor | None:
    """The sparse prior's energy of value nodes ``x`` ``(E, B, n)`` per sample, ``(E, B)``, or None without one.

    ``sparse = (lambda, s, kind)`` (:meth:`~pcsim.network.NetworkSpec.sparse`): ``lambda sum_i
    log(1 + x_i^2 / s^2)`` for ``kind = "cauchy"`` (the negative log of a Cauchy density up to
    a constant; Rao & Ballard 1999, Olshausen & Field 1996), ``lambda sum_i |x_i| / s`` for
    ``"l1"`` (a Laplace prior). Its gradient is in :func:`node_gradient`.
    """
    if sparse is None:
        return None
    lam, s, kind = sparse
    if kind == "l1":
        return x.abs().sum(-1).mul_(lam / s)
    return torch.log1p((x / s).square()).sum(-1).mul_(lam)


def sparse_energies(spec: "NetworkSpec", x: Sequence[Tensor]) -> Tensor | None:
    """The sparse prior's energy of every layer and sample, ``(E, B, L+1)``, or None when no layer has one."""
    if not spec.sparsity:
        return None
    terms = [sparse_energy(xl, spec.sparse(l)) for l, xl in enumerate(x)]
    return torch.stack([x[-1].new_zeros(x[-1].shape[:-1]) if t is None else t for t in terms], -1)


def node_energies(spec: "NetworkSpec", eps: Sequence, peps: Sequence, x: Sequence[Tensor]) -> Tensor:
    """The energy that inference descends, per layer and sample, ``(E, B, L+1)``: the quadratic
    energy of each layer's error (:func:`quadratic_energies`) plus its sparse prior (:func:`sparse_energies`), if any."""
    out = quadratic_energies(eps, peps, x[-1])
    sparse = sparse_energies(spec, x)
    return out if sparse is None else out + sparse


def log_det_precision(spec: "NetworkSpec", log_precision: Sequence[Tensor]) -> list[Tensor]:
    """``log det Pi_l`` of layers ``l = 1..L``, each ``(E, 1)``: a scalar precision counts ``n_l`` times."""
    return [lp[..., 0] * spec.sizes[l + 1] if spec.scalar_precision[l] else lp.sum(-1)
            for l, lp in enumerate(log_precision)]


def layer_energies(net: "PCNetwork", x: Sequence[Tensor]) -> Tensor:
    """Energy of each layer and sample, ``(E, B, L+1)``; column 0 is the prior term (0 if discriminative).

    Includes layer ``l``'s sparse prior (:func:`sparse_energy`) where the network has one and
    ``-1/2 log det Pi_l`` per layer when ``net.learn_precision`` is set, so the total is the
    negative log joint density up to a constant.
    """
    eps, peps, _ = _network_errors(net, x)
    out = node_energies(net.spec, eps, peps, x)
    if net.learn_precision:
        logdet = torch.stack([x[-1].new_zeros(net.ensemble, 1)] + log_det_precision(net.spec, net.log_precision), -1)
        out = out - 0.5 * logdet
    return out


def energy(net: "PCNetwork", x: Sequence[Tensor]) -> Tensor:
    """Total energy per ensemble member and sample, ``(E, B)``."""
    return layer_energies(net, x).sum(-1)


def output_loss(net: "PCNetwork", output: Tensor, target: Tensor) -> Tensor:
    """The backprop loss matching the output energy: ``1/2 (y - out)^T Pi_L (y - out)`` averaged over the batch, ``(E,)``."""
    eps = target - output
    return quadratic_energy(eps, net.log_precision[-1].exp() * eps, eps).mean(-1)


# --------------------------------------------------------------------------- gradients
def node_gradient(peps: Tensor | None, peps_below: Tensor | None, weight: Tensor | None, slope: Tensor | None,
                  like: Tensor, sparse: tuple[float, float, str] | None = None) -> Tensor:
    """``dE/dx_l = Pi_l eps_l - f'(x_l) * ((Pi_{l+1} eps_{l+1}) @ W_{l+1}^T) [+ dS/dx_l]``, ``(E, B, n_l)``.

    The node's own weighted error ``peps`` pushes it towards its prediction; the weighted error
    ``peps_below`` of the layer it predicts pulls it back through ``weight`` ``(E, n_l, n_{l+1})``
    and the slope ``f'(x_l)`` (``slope``). ``peps`` is None for a node without its own energy
    (a discriminative input), ``peps_below`` None for the last layer; ``like`` is the node
    ``x_l`` itself (its shape, and its values for the sparse prior). With ``sparse = (lambda,
    s, kind)`` the sparse prior :func:`sparse_energy` pulls the node towards 0 with ``dS/dx =
    lambda 2 x / (s^2 + x^2)`` (``"cauchy"``: strong for small responses, fading for large
    ones, which is what makes the code sparse) or ``lambda sign(x) / s`` (``"l1"``).
    """
    if peps_below is None:
        g = torch.zeros_like(like) if peps is None else peps
    else:
        back = torch.bmm(peps_below, weight.transpose(1, 2))
        if peps is None:
            g = back.mul_(slope).neg_()
        else:
            g = torch.addcmul(peps, slope, back, value=-1.0)  # one fused kernel on the eager path
    if sparse is None:
        return g
    lam, s, kind = sparse
    if kind == "l1":
        return g + like.sign() * (lam / s)
    return g + like * (2.0 * lam) / (like.square() + s * s)


def value_gradients(net: "PCNetwork", x: Sequence[Tensor]) -> list[Tensor]:
    """Explicit ``dE/dx_l`` for every layer ``l = 0..L`` (clamped or not), each ``(E, B, n_l)`` (:func:`node_gradient`)."""
    _, peps, fx = _network_errors(net, x)
    L = net.depth
    out = []
    for l in range(L + 1):
        if l < L:
            act = net.activation(l)
            out.append(node_gradient(peps[l], peps[l + 1], net.weights[l], act.df(x[l], fx[l]), x[l], net.spec.sparse(l)))
        else:
            out.append(node_gradient(peps[l], None, None, None, x[l], net.spec.sparse(l)))
    return out


def parameter_gradients(spec: "NetworkSpec", peps: Sequence, fx: Sequence, eps: Sequence | None = None) -> list[Tensor]:
    """Batch-mean ``dE/dtheta`` from local quantities, ordered as ``PCNetwork.parameters()``.

    ``spec``: the network's :class:`~pcsim.network.NetworkSpec` (``net.spec``). ``peps[l]`` ``(E, B, n_l)`` are precision-weighted
    errors, ``fx[l]`` ``(E, B, n_l)`` the pre-synaptic activities; ``eps`` (unweighted errors)
    is needed only for precision learning. Each weight gradient is one Hebbian outer product
    summed over the batch: ``dE/dW_l = -f(x_{l-1})^T (Pi_l eps_l) / B``, ``dE/db_l =
    -mean_B(Pi_l eps_l)``, ``dE/dlog Pi_l = 1/2 (Pi_l eps_l^2 - 1)`` (summed over units for a
    scalar precision), ``dE/dm_0 = -mean_B(Pi_0 eps_0)`` in generative mode.
    """
    L = len(spec.sizes) - 1
    B = peps[L].shape[1]
    grads = [torch.bmm(fx[k].transpose(1, 2), peps[k + 1]).mul_(-1.0 / B) for k in range(L)]
    grads += [peps[k + 1].mean(1, keepdim=True).neg_() for k in range(L)]
    if spec.learn_precision:
        if eps is None:
            raise ConfigError("eps: precision learning needs the unweighted errors `eps`, got None")
        for k in range(L):
            sq = (peps[k + 1] * eps[k + 1]).mean(1, keepdim=True)  # Pi eps^2, batch mean, (E,1,n)
            if spec.scalar_precision[k]:
                grads.append(0.5 * (sq.sum(-1, keepdim=True) - spec.sizes[k + 1]))
            else:
                grads.append(0.5 * (sq - 1.0))
    if spec.mode == "generative":
        grads.append(peps[0].mean(1, keepdim=True).neg_())
    return grads
