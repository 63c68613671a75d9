"""The one relaxation loop: T steps of any relaxing system, eager or compiled, checked between chunks.

A *relaxing system* is an object with five methods (see :class:`RelaxingSystem`):

``step(carry) -> carry``
    one step of the dynamics, a pure function of the carry (and of the system's tensors);
    without Python side effects or host synchronisation (``bool(tensor)``) it can also be
    compiled, a chunk of steps whole, by ``compile=True``. The carry is a tuple / list / NamedTuple of tensors holding the
    state *and* what the step needs that was computed at it (errors, the direction of the
    next move), so the energies of a state come at no extra cost.
``energies(carry) -> Tensor``
    the energy at the carry's state, shaped ``(E, B, ..., K)`` (ensemble member, trial, any
    sites such as time bins, energy terms such as layers).
``totals(energies) -> Tensor``
    the sums that must stay finite and bounded, reducing the trailing dimensions of one
    step's energies and keeping any leading ones (static PC: one per member, ``(..., E)``;
    dynamical PC: one per trial, ``(..., E, B)``).
``diverged(t, energies, start) -> InferenceDivergenceError``
    the error to raise when the energies at step ``t`` are non-finite, grew past
    ``max_growth`` times ``start``, or ended the run above ``start`` (:func:`rose`), naming the
    step and where (layer, time bin, member); its message is :func:`divergence_message`'s,
    the one wording of every inference divergence.
``observe(carry, energies) -> dict[str, Tensor]``
    what a recording keeps at a step (called only when recording).

and may say, with an attribute ``descends`` (default True), whether its step descends the
energy it reports; only then is a run that ends above its start a divergence (criterion 3
below). The fixed-prediction dynamics, whose frozen predictions make its step no gradient of
the energy, says False.

:func:`run` drives it: the loop checks divergence, records and stops early on a tolerance
*between chunks* of steps; each chunk is :func:`advance`, plain Python when eager (a hook,
such as incremental PC's weight update, runs before each of its steps) and the same function
``torch.compile``d otherwise (a hook then runs between one-step chunks). A compiled chunk returns the
energies of each of its steps, so a divergence is located at the step where it began
without running anything again; an eager chunk keeps only its last energies (cheaper) and,
only when that check fails, replays itself from its start (exact, the step being pure).
Static PC (:func:`pcsim.inference.relax`) and the fused training step of
:class:`pcsim.rules.StandardPC` both run through here.

Divergence has three criteria, each a property a stable relaxation has: (1) every energy
stays finite; (2) no total exceeds ``max_growth`` times its start (a fast blow-up, caught
at the first bad step); (3) the run does not end with a total above its start by more than
``RISE_RTOL`` (relative): the relaxation descends the energy (gradient flow, or heavy ball from
rest, whose energy plus kinetic term only falls), so a run that ends higher than it began was
driven by a step too large for the curvature. Criterion (3) catches what the relative bound
(2) cannot: an energy already huge at step 0 (a large precision or weight scale) that grows
by less than ``max_growth`` times over the run, e.g. 1e14 -> 9e14 in 20 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from . import parallel
from .errors import InferenceDivergenceError

Tensor = torch.Tensor
Carry = Any

#: a run whose final total energy exceeds its start by more than this fraction diverged (criterion 3)
RISE_RTOL = 1e-3
#: what separates what diverged from its likely cause in every divergence message
CAUSE = "; likely cause: "


def divergence_message(what: str, cause: str) -> str:
    """The one wording of an inference divergence: ``"inference diverged: {what}; likely cause: {cause}"``.

    ``what`` says which energy did what at which step and where; ``cause`` names the setting to
    change (:func:`step_cause`). :func:`pcsim.training.train` replaces the cause when the
    weights had been learned before the relaxation blew up (then the learning rate is to blame)."""
    return f"inference diverged: {what}{CAUSE}{cause}"


def step_cause(step_size: float, momentum: float = 0.0, precisions: dict[str, float] | None = None,
               hint: str = "") -> str:
    """The likely cause of a relaxation's divergence, from what the system knows of its step.

    ``precisions`` maps a name (``"Pi_2"``) to the largest precision of that term. Euler steps on
    a term of precision ``Pi`` are stable only while ``dt/tau * Pi`` (times the squared gain of
    the weights) stays below 2, so when a precision above 1 lifts a moderate step (``dt/tau < 1``)
    to ``dt/tau * Pi >= 1`` the precision is named; else the step size ``dt/tau`` (and the
    momentum, when used), with the largest precision beside it when it is above 1. ``hint`` is
    appended (e.g. another preconditioner)."""
    name, pi = max((precisions or {"": 0.0}).items(), key=lambda kv: kv[1])
    mom = f" or the momentum (now {momentum:g})" if momentum > 0 else ""
    if name and pi > 1.0 and step_size < 1.0 <= step_size * pi:
        text = (f"the precision {name} = {pi:.4g}, which makes the effective step dt/tau * {name} = "
                f"{step_size * pi:.4g}; lower that precision or dt/tau (now {step_size:g}){mom}")
    else:
        beside = f" (with {name} = {pi:.4g})" if name and pi > 1.0 else ""
        text = f"the step size dt/tau (now {step_size:g}){beside} is too large for the curvature; reduce it{mom}"
    return text + (f", {hint}" if hint else "")


def growth_what(tot0: float, tot: float, t: int, max_growth: float) -> str:
    """How a total energy grew from ``tot0`` to ``tot`` by step ``t``: past ``max_growth`` times its start, or a descent that ended above its start."""
    how = (f"more than max_growth={max_growth:g} times" if tot > max_growth * abs(tot0) + 1e-6
           else f"a relaxation that descends must not end above its start; rise > {RISE_RTOL:g} of it")
    return f"energy grew from {tot0:.4g} to {tot:.4g} ({how}) by step {t}"


def worst(system: "RelaxingSystem", energies: Tensor, start: Tensor) -> tuple[int, ...]:
    """Index of the total (``system.totals``' leading dims, e.g. member or (member, trial)) that grew most relative to its start."""
    tot, tot0 = system.totals(energies), system.totals(start)
    ratio = (tot - tot0) / (tot0.abs() + 1e-30)
    return tuple(int(i) for i in torch.unravel_index(torch.argmax(ratio), ratio.shape))


class RelaxingSystem(Protocol):
    """What :func:`run` needs of a system (module docstring)."""

    def step(self, carry: Carry) -> Carry: ...

    def energies(self, carry: Carry) -> Tensor: ...

    def totals(self, energies: Tensor) -> Tensor: ...

    def diverged(self, t: int, energies: Tensor, start: Tensor) -> InferenceDivergenceError: ...

    def observe(self, carry: Carry, energies: Tensor) -> dict[str, Tensor]: ...


@dataclass
class LoopResult:
    """What :func:`run` returns: the final ``carry``, its ``energy`` (one step's energies), the
    number of ``steps`` taken and, when recorded, ``trace``: each observed quantity stacked over
    steps ``0..steps`` (step 0 is the initial state) as numpy arrays."""

    carry: Carry
    energy: Tensor
    steps: int
    trace: dict[str, np.ndarray] | None = None


def advance(system: RelaxingSystem, carry: Carry, n: int, per_step: bool,
            on_step: Callable[[int, Carry], None] | None = None, t0: int = 0) -> tuple[Carry, Tensor]:
    """``n`` steps of ``system`` from ``carry`` (steps ``t0 .. t0+n-1``): the new carry and the
    energies after each step, ``(n, ...)`` (``per_step``) or after the last one only, ``(1, ...)``.
    Pure without ``on_step``, and then compiled whole; ``on_step(t, carry)`` (eager only) is
    called before each step."""
    ens = []
    for i in range(n):
        if on_step is not None:
            on_step(t0 + i, carry)
        carry = system.step(carry)
        if per_step:
            ens.append(system.energies(carry))
    if not per_step:
        ens.append(system.energies(carry))
    return carry, torch.stack(ens)


def bad_steps(system: RelaxingSystem, energies: Tensor, start: Tensor, max_growth: float) -> Tensor:
    """Per step of ``energies`` ``(n, ...)``: True where an energy is non-finite or a total exceeds
    ``max_growth`` times its value at ``start`` (``(n,)`` bool; all on the device, no sync)."""
    n = energies.shape[0]
    finite = torch.isfinite(energies).reshape(n, -1).all(1)
    tot, tot0 = system.totals(energies), system.totals(start)
    grown = (tot > max_growth * tot0.abs() + 1e-6).reshape(n, -1).any(1)
    return ~finite | grown


_COMPILED: dict[tuple, Callable] = {}


def compiled(fn: Callable, threads: int) -> Callable:
    """``fn`` compiled by ``torch.compile`` for ``threads`` CPU threads (once per process and thread
    count; dynamo specialises it further per system type, static settings, ``n`` and shapes)."""
    key = (fn, threads)
    if key not in _COMPILED:
        # the C++ wrapper calls the kernels without Python in between (~10% on small nets);
        # the generated kernels fork exactly `threads` threads (pcsim.parallel says why)
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False,
                                       options={"cpp_wrapper": True, "cpp.threads": threads})
    return _COMPILED[key]


def check(system: RelaxingSystem, t0: int, energies: Tensor, start: Tensor, max_growth: float,
          bad: Tensor | None = None) -> None:
    """Raise the system's divergence error for the first bad step of a chunk whose steps are ``t0 .. t0+n-1``
    (``bad``: :func:`bad_steps` of these energies when a compiled graph has already computed it)."""
    if bad is None:
        bad = bad_steps(system, energies, start, max_growth)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise system.diverged(t0 + i, energies[i], start)


def rose(system: RelaxingSystem, energies: Tensor, start: Tensor) -> bool:
    """True when a total of ``energies`` (one step's, the end of a run) exceeds its ``start`` by
    more than ``RISE_RTOL`` of it (criterion 3 of the module docstring)."""
    tot, tot0 = system.totals(energies), system.totals(start)
    return bool((tot > tot0 + RISE_RTOL * tot0.abs() + 1e-6).any())


def check_end(system: RelaxingSystem, t: int, energies: Tensor, start: Tensor, descent: bool = True) -> None:
    """Raise the system's divergence error when the run that ended at step ``t`` with ``energies``
    rose above ``start`` (only with ``descent`` and a system that descends)."""
    if descent and t > 0 and getattr(system, "descends", True) and rose(system, energies, start):
        raise system.diverged(t, energies, start)


def run(system: RelaxingSystem, carry: Carry, steps: int, *, max_growth: float = 10.0, tol: float = 0.0,
        record: bool = False, check_every: int = 0, compile: bool = False,
        on_step: Callable[[int, Carry], None] | None = None, threads: int | None = None,
        check_descent: bool = True) -> LoopResult:
    """Relax ``system`` from ``carry`` for ``steps`` steps; the one loop of every relaxing system.

    ``max_growth``: the totals may not exceed this many times their start (divergence);
    ``tol``: stop once every total changes by at most ``tol`` times its previous value in one
    step (0: never); ``record``: keep ``system.observe`` at every step; ``check_every``: check
    divergence every k steps (0: at the end; recording and ``tol`` check every step);
    ``compile``: run chunks of steps as compiled graphs; ``on_step(t, carry)``: called before
    step ``t`` moves the state (it may change the system's tensors in place, e.g. weights; a
    divergence in a chunk with a hook is reported at the check that sees it, since replaying
    would call the hook again);
    ``check_descent``: apply criterion 3 (a run must not end above its start; module docstring);
    ``threads``: CPU threads for the whole run (:func:`pcsim.parallel.threads_for`; None: as set).
    Raises the system's :class:`InferenceDivergenceError` naming the step where it began, or
    the last step when the run ended above its start (module docstring, criterion 3).
    """
    with parallel.threads(threads or torch.get_num_threads()):
        return _run(system, carry, steps, max_growth, tol, record, check_every, compile, on_step, check_descent)


def _run(system, carry, steps, max_growth, tol, record, check_every, compile, on_step, check_descent) -> LoopResult:
    start = system.energies(carry)
    check(system, 0, start[None], start, max_growth)
    trace = None
    if record:
        trace = {k: [v.detach().cpu().numpy().copy()] for k, v in system.observe(carry, start).items()}
    # chunks: one step where the loop acts between steps (recording, tolerance, or a hook around a
    # compiled chunk, which cannot call Python); else as many steps as there are between checks
    chunk = 1 if (record or tol > 0 or (compile and on_step is not None)) else (check_every or steps)
    en, prev, t = start, system.totals(start), 0
    while t < steps:
        n = min(chunk, steps - t)
        before = carry
        if compile:
            if on_step is not None:
                on_step(t, carry)
            carry, ens = compiled(advance, torch.get_num_threads())(system, carry, n, True)
        else:
            carry, ens = advance(system, carry, n, False, on_step, t)
        if bool(bad_steps(system, ens, start, max_growth).any()):
            if not compile and n > 1 and on_step is None:
                # an eager chunk keeps its last energies only: replay it (pure) to find the first bad step
                _, ens = advance(system, before, n, True)
            check(system, t + n - ens.shape[0] + 1, ens, start, max_growth)
        en = ens[-1]
        t += n
        if trace is not None:
            for k, v in system.observe(carry, en).items():
                trace[k].append(v.detach().cpu().numpy().copy())
        if tol > 0:
            total = system.totals(en)
            if bool(((prev - total).abs() <= tol * prev.abs()).all()):
                break
            prev = total
    check_end(system, t, en, start, check_descent)
    out = {k: np.stack(v) for k, v in trace.items()} if trace is not None else None
    return LoopResult(carry, en, t, out)


def step_coords(n_states: int, dt: float) -> dict:
    """The coordinates of a recorded relaxation's ``step`` axis for ``n_states`` states (step 0
    is the start): ``step`` (index, units "1") and ``time`` (``step * dt``, ``dt`` in ms, stored
    in seconds as every pcsim time is), as xarray coordinate tuples."""
    return {"step": ("step", np.arange(n_states), {"units": "1", "long_name": "inference step"}),
            "time": ("step", np.arange(n_states) * dt * 1e-3, {"units": "s", "long_name": "relaxation time"})}
