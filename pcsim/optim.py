"""Optimisers over explicit gradient lists, shared by PC rules and their backprop twins.

PC weight updates are computed by local rules, not by autograd, so the optimiser takes
``(params, grads)`` lists rather than reading ``.grad``. The backprop twin feeds the same
optimiser class its autograd gradients: same optimiser, same hyper-parameters, same code.
Every parameter has a leading ensemble axis ``E``; ``lr`` may be one number or one per
member (shape ``(E,)``), which is how an ensemble sweeps learning rates in one run.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .arguments import check_number, check_numbers
from .errors import ConfigError

Tensor = torch.Tensor


def _checked_lr(owner: str, lr) -> float | Sequence[float] | Tensor:
    """``lr`` after checking that it is one finite number >= 0 (0: that member does not learn) or a sequence (``(E,)`` tensor) of
    them; :class:`ConfigError` naming ``{owner}.lr`` otherwise. Called at construction and at
    every assignment, so a schedule that sets ``optimizer.lr`` between epochs is checked at
    each value it uses (one NaN learning rate would turn every weight into NaN)."""
    if isinstance(lr, Tensor) and lr.dim() == 0:
        return check_number(f"{owner}.lr", lr, ge=0)
    if isinstance(lr, (Tensor, list, tuple)):
        values = check_numbers(f"{owner}.lr", lr.reshape(-1).tolist() if isinstance(lr, Tensor) else lr, ge=0)
        if not values:
            raise ConfigError(f"{owner}.lr must be one number or one per ensemble member, got an empty {type(lr).__name__}")
        return lr
    return check_number(f"{owner}.lr", lr, ge=0)


def _per_member(value: float | Sequence[float] | Tensor, like: Tensor) -> float | Tensor:
    """A scalar stays a scalar; a per-member value becomes a tensor broadcastable against ``like`` ``(E, ...)``."""
    if isinstance(value, (int, float)):
        return float(value)
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class SGD:
    """Stochastic gradient descent with optional (heavy-ball) momentum: ``v = m v + g; p -= lr v``."""

    def __init__(self, lr: float | Sequence[float] = 0.01, momentum: float = 0.0):
        self.lr = lr
        self.momentum = check_number("SGD.momentum", momentum, ge=0, lt=1)
        self._velocity: list[Tensor] | None = None

    @property
    def lr(self) -> float | Sequence[float] | Tensor:
        """The learning rate (dimensionless, per update): one number or one per member; checked when set."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _checked_lr("SGD", value)

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue this optimiser exactly: ``lr`` and the momentum
        ``velocity`` (None before the first step); the tensors are the live ones (a checkpoint copies them)."""
        return {"lr": self.lr, "velocity": self._velocity}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s ``state`` (new tensors; the momentum is the constructor's)."""
        self.lr = state["lr"]
        velocity = state["velocity"]
        self._velocity = None if velocity is None else [v.clone() for v in velocity]

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


class AdamState(NamedTuple):
    """Adam's state: ``step`` (updates taken so far: an int, or a 0-dim tensor inside compiled
    code so that a graph is not specialised on the count) and the moments ``m``, ``v`` (one
    tensor per parameter, same shapes)."""

    step: int | Tensor
    m: list[Tensor]
    v: list[Tensor]


def adam_init(params: Sequence[Tensor]) -> AdamState:
    """The state before the first update: step 0, zero moments shaped like ``params``."""
    return AdamState(0, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params])


def adam_update(params: Sequence[Tensor], grads: Sequence[Tensor], state: AdamState,
                lr: float | Sequence[float] | Tensor, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8) -> tuple[list[Tensor], AdamState]:
    """One Adam update (Kingma & Ba 2015), pure: ``(new_params, new_state)``; nothing is modified.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr * m_hat / (sqrt(v_hat) + eps)``
    with the bias corrections of ``torch.optim.Adam``. ``params``/``grads``: matching lists of
    ``(E, ...)`` tensors; ``lr``: one number or one per ensemble member (``(E,)``). Used by
    :meth:`Adam.step` and, compiled, by the fused standard-PC training step.
    """
    b1, b2 = betas
    params, grads = list(params), list(grads)
    t = state.step + 1
    m = torch._foreach_lerp(list(state.m), grads, 1 - b1)
    v = torch._foreach_addcmul(torch._foreach_mul(list(state.v), b2), grads, grads, value=1 - b2)
    bc1 = 1 - b1 ** t
    bc2 = (1 - b2 ** t) ** 0.5
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), bc2), eps)
    if not isinstance(lr, (int, float)):
        new = [p - (_per_member(lr, p) / bc1) * mi / d for p, mi, d in zip(params, m, denom)]
    elif isinstance(t, Tensor):  # a tensor step count (compiled graphs): the scale is a tensor too
        new = torch._foreach_addcdiv(params, torch._foreach_mul(m, -lr / bc1), denom)
    else:
        new = torch._foreach_addcdiv(params, m, denom, value=-lr / bc1)
    return list(new), AdamState(t, list(m), list(v))


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, matching ``torch.optim.Adam`` defaults.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr * m_hat / (sqrt(v_hat) + eps)``
    (:func:`adam_update`); ``state`` (:class:`AdamState`) is ``None`` until the first step.
    """

    def __init__(self, lr: float | Sequence[float] = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr = lr
        betas = check_numbers("Adam.betas", betas, ge=0, lt=1)
        if len(betas) != 2:
            raise ConfigError(f"Adam.betas must be two numbers (b1, b2), got {betas!r}")
        self.betas = betas
        self.eps = check_number("Adam.eps", eps, ge=0)
        self.state: AdamState | None = None

    @property
    def lr(self) -> float | Sequence[float] | Tensor:
        """The learning rate (dimensionless, per update): one number or one per member; checked when set."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _checked_lr("Adam", value)

    @property
    def t(self) -> int:
        """Number of updates taken."""
        return 0 if self.state is None else int(self.state.step)

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue this optimiser exactly: ``lr`` and ``state`` (the
        :class:`AdamState` as a dict of ``step``, ``m``, ``v``; None before the first step). The
        tensors are the live ones (a checkpoint copies them)."""
        st = None if self.state is None else {"step": self.state.step, "m": list(self.state.m), "v": list(self.state.v)}
        return {"lr": self.lr, "state": st}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s ``state`` (new tensors; betas and eps are the constructor's)."""
        self.lr = state["lr"]
        st = state["state"]
        self.state = None if st is None else AdamState(st["step"], [m.clone() for m in st["m"]], [v.clone() for v in st["v"]])

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Update ``params`` in place from ``grads`` (same order and shapes, ``(E, ...)`` each)."""
        if self.state is None:
            self.state = adam_init(params)
        new, self.state = adam_update(params, grads, self.state, self.lr, self.betas, self.eps)
        torch._foreach_copy_(list(params), new)


def make_optimizer(name: str, lr: float | Sequence[float], momentum: float = 0.0) -> SGD | Adam:
    """Build the optimiser called ``name`` (``"sgd"`` or ``"adam"``) with learning rate ``lr`` (per update, dimensionless).

    Raises :class:`ConfigError` naming ``name``, ``lr`` or ``momentum`` when one is unknown or out of range."""
    if name == "sgd":
        return SGD(lr, momentum)
    if name == "adam":
        if momentum:
            raise ConfigError(f"momentum applies to the 'sgd' optimizer; Adam has its own (betas), got momentum={momentum!r}")
        return Adam(lr)
    raise ConfigError(f"unknown optimizer {name!r}; known: sgd, adam")
