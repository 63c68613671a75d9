"""Optimisers over explicit gradient lists, shared by PC rules and their backprop twins.

PC weight updates are computed by local rules, not by autograd, so the optimiser takes
``(params, grads)`` lists rather than reading ``.grad``. The backprop twin feeds the same
optimiser class its autograd gradients: same optimiser, same hyper-parameters, same code.
Every parameter has a leading ensemble axis ``E``; ``lr`` may be one number or one per
member (shape ``(E,)``), which is how an ensemble sweeps learning rates in one run.
"""

from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor


def _per_member(value: float | Sequence[float] | Tensor, like: Tensor) -> float | Tensor:
    """A scalar stays a scalar; a per-member value becomes a tensor broadcastable against ``like`` ``(E, ...)``."""
    if isinstance(value, (int, float)):
        return float(value)
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class SGD:
    """Stochastic gradient descent with optional (heavy-ball) momentum: ``v = m v + g; p -= lr v``."""

    def __init__(self, lr: float | Sequence[float] = 0.01, momentum: float = 0.0):
        self.lr, self.momentum = lr, momentum
        self._velocity: list[Tensor] | None = None

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Update ``params`` in place from ``grads`` (same order and shapes, ``(E, ...)`` each)."""
        if self.momentum > 0:
            if self._velocity is None:
                self._velocity = [torch.zeros_like(p) for p in params]
            for v, g in zip(self._velocity, grads):
                v.mul_(self.momentum).add_(g)
            grads = self._velocity
        for p, g in zip(params, grads):
            lr = _per_member(self.lr, p)
            if isinstance(lr, float):
                p.sub_(g, alpha=lr)
            else:
                p.sub_(lr * g)


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, matching ``torch.optim.Adam`` defaults.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr * m_hat / (sqrt(v_hat) + eps)``.
    """

    def __init__(self, lr: float | Sequence[float] = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self._m: list[Tensor] | None = None
        self._v: list[Tensor] | None = None
        self.t = 0

    def begin_step(self, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """For a compiled step that applies :func:`adam_update_` itself: count the step and return
        the moment buffers ``(m, v)`` and ``scal = [lr / (1 - b1^t), sqrt(1 - b2^t)]`` (scalar lr only)."""
        if not isinstance(self.lr, (int, float)):
            raise ValueError("a compiled Adam step needs one scalar learning rate")
        if self._m is None:
            self._m = [torch.zeros_like(p) for p in params]
            self._v = [torch.zeros_like(p) for p in params]
        self.t += 1
        b1, b2 = self.betas
        scal = torch.tensor([self.lr / (1 - b1 ** self.t), (1 - b2 ** self.t) ** 0.5], dtype=params[0].dtype)
        return self._m, self._v, scal.to(params[0].device)

    def cancel_step(self) -> None:
        """Undo the step count of a :meth:`begin_step` whose update was not applied."""
        self.t -= 1

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Update ``params`` in place from ``grads`` (same order and shapes, ``(E, ...)`` each)."""
        b1, b2 = self.betas
        if self._m is None:
            self._m = [torch.zeros_like(p) for p in params]
            self._v = [torch.zeros_like(p) for p in params]
        self.t += 1
        torch._foreach_lerp_(self._m, list(grads), 1 - b1)
        torch._foreach_mul_(self._v, b2)
        torch._foreach_addcmul_(self._v, list(grads), list(grads), value=1 - b2)
        bc1 = 1 - b1 ** self.t
        bc2 = (1 - b2 ** self.t) ** 0.5
        denom = torch._foreach_sqrt(self._v)
        torch._foreach_div_(denom, bc2)
        torch._foreach_add_(denom, self.eps)
        if isinstance(self.lr, (int, float)):
            torch._foreach_addcdiv_(params, self._m, denom, value=-self.lr / bc1)
        else:
            for p, m, d in zip(params, self._m, denom):
                p.sub_(_per_member(self.lr, p) / bc1 * m / d)


def adam_update_(params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor], scal: Tensor,
                 betas: tuple[float, float], eps: float, apply: Tensor) -> None:
    """:meth:`Adam.step`'s update written per tensor for compiled graphs, in place, where
    ``apply`` (0-dim bool) is true; ``scal = [lr / (1 - b1^t), sqrt(1 - b2^t)]`` as a tensor so
    that a compiled graph is not specialised on the step count."""
    b1, b2 = betas
    for p, g, mi, vi in zip(params, grads, m, v):
        m_new = mi.lerp(g, 1 - b1)
        v_new = vi.mul(b2).addcmul(g, g, value=1 - b2)
        p.copy_(torch.where(apply, p - scal[0] * m_new / (v_new.sqrt() / scal[1] + eps), p))
        mi.copy_(torch.where(apply, m_new, mi))
        vi.copy_(torch.where(apply, v_new, vi))


def make_optimizer(name: str, lr: float | Sequence[float], momentum: float = 0.0) -> SGD | Adam:
    """Build the optimiser called ``name`` (``"sgd"`` or ``"adam"``) with learning rate ``lr`` (per update, dimensionless)."""
    if name == "sgd":
        return SGD(lr, momentum)
    if name == "adam":
        if momentum:
            raise ValueError("momentum applies to the 'sgd' optimizer; Adam has its own (betas)")
        return Adam(lr)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adam")
