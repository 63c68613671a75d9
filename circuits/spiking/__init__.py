"""The laminar rate circuit translated into a Brian2 network of leaky integrate-and-fire neurons.

Every rate unit of a :class:`~circuits.laminar.CircuitGraph` becomes ``N`` LIF neurons whose
population rate encodes the unit's activity; every signed projection becomes synapses, split
by sign into one excitatory and one inhibitory :class:`brian2.Synapses` object.

**Neuron.** All neurons share one model (dimensionless membrane potential, threshold 1,
reset 0, refractory period ``t_ref``)::

    tau_m dv/dt = mu0 + k * polarity * s - v        (+ a noise kick every update_ms)
    tau_s ds/dt = -lam * s + ext(t) + tau_s * sum_spikes w_syn * delta(t - t_spike)

``s`` is the rate unit's input ``u`` in rate units: with ``lam = 1`` the synaptic current
low-pass filters the input as the rate equation ``tau dx/dt = -x + u`` does (``tau_s = tau -
lag_ms``: the LIF group's own ~1 ms response lag makes up the rest), and with ``lam = leak``
and ``tau_s = tau`` it *is* the integrator of an L5/6 unit (``tau dr/dt = -leak r + u``): a
neuron-model variable that integrates incoming spikes, identical in every neuron of the unit
because the unit's neurons all receive the same spikes (units are connected all-to-all).
``ext`` carries what is not a spike: the bias, the stimulus (current drive, a
:class:`brian2.TimedArray`) and the cue-gated prior ``gain * c(t) * m``. Membrane noise of free
standard deviation ``noise`` (uniform kicks every ``update_ms``, see :class:`SpikingParams`)
keeps the ``N`` neurons asynchronous and makes the rate a threshold-linear function of ``s``
(the Siegert formula, Brunel 2000, with a discrete-kick correction; :func:`lif_rate`).

**Rate code: push-pull.** The operating point ``mu0`` puts the neurons just below threshold
(they fire ``floor_hz`` at ``s = 0``) and ``k`` makes the rate rise by ``gain_hz`` per rate
unit, so a group's rate is ``floor + gain * [polarity * s]_+`` up to a soft threshold. A
rectified population (the L2/3 errors) is one such group. A signed population (L4 relays,
L5/6 representations, the stimulus) is a pair of groups, ON (``polarity +1``) and OFF
(``-1``), sharing ``s``; its activity is ``(R_on - R_off) / gain``. The alternative, one
group at a baseline rate ``r0 + gain * x``, fires ``r0`` even when ``x = 0`` and its Poisson-like
spike noise at that baseline swamps the small error signals downstream (the L2/3 errors of the
oddball circuit vary by a few hundredths of a rate unit); push-pull groups are silent at rest,
so their noise scales with the signal (the same argument as ON/OFF channels in the retina).

**Synapses.** A projection ``u_dst += x_src @ W`` connects each source group (polarity
``p``) all-to-all, unit block to unit block, to the target groups with
``w_syn = p * W[i, j] * 1000 / (gain * N * tau_s[ms])`` (the target's ``tau_s``): ``N`` neurons firing ``R`` Hz raise
``s`` on average by ``W * R / gain``. The floor rate is removed by a constant
``- p * W * floor / gain`` in ``ext`` (it cancels between ON and OFF groups and between the
``l23_pos`` / ``l23_neg`` pairs of a laminar circuit). Positive ``w_syn`` go to the excitatory,
negative ones to the inhibitory Synapses object; both add to ``s``.

**Prior.** The top-level prior mean ``m`` is a tiny NeuronGroup (one element per trial and
top unit) that integrates spikes of the two top error groups, ``m += ±prior_rate * 1000 /
(gain * N) * c(t)`` per spike (``dm/dt = prior_rate * c * (e+ - e-)``); the top populations
read it through a linked variable.

**Speed.** The whole circuit is ONE NeuronGroup (population, unit, polarity and trial are
per-neuron constants), two Synapses objects, the prior group and its Synapses, one
``run_regularly`` operation and one SpikeMonitor, so the per-step overhead of Brian2's runtime
targets stays small. Blocks of a stimulus run side by side as independent copies in the one
network. Every run builds its own :class:`brian2.Network` in a fresh scope, with fixed object,
clock and TimedArray names (so the generated code, hence the compiled-code cache key, is the
same from run to run), and 'cpp_standalone' runs reset the device afterwards.

**Defaults** (:class:`SpikingParams`) were chosen on the oddball circuit of
``configs/spiking_oddball.toml``: low membrane noise (0.15) makes the group respond within
~1 ms and narrows the soft threshold; a high gain (200 Hz per rate unit, refractory 0.5 ms)
gives each unit enough spikes that 40 neurons resolve error signals of a few hundredths
(the spike-count noise of a group falls as ``1 / sqrt(N * gain)``). The rate circuit must
tolerate the small extra lag: with ``tau_deep = 10`` ms the oddball circuit has a barely
damped ~30 Hz mode that a 1.5 ms lag destabilises, hence ``tau_deep = 20`` ms there.

Only linear transfers are translated (a spike count cannot carry ``f(x)`` of a rate code
without a second non-linearity); a graph with non-linear activations is refused.

The package follows the translation's seams: :mod:`.params` (:class:`SpikingParams`),
:mod:`.rate_code` (LIF rate theory), :mod:`.translation` (:class:`SpikingCircuit`: groups,
synapses, constants), :mod:`.runner` (the Brian2 network), :mod:`.decoding` (spikes to a
Dataset) and :mod:`.nwb` (spike trains for export). Epochs are cut by
:func:`circuits.epochs.cut_epochs`, the same function as for rate results; the benchmark is
:func:`circuits.bench.spiking_benchmark`.
"""

from ..epochs import cut_epochs
from .nwb import spike_trains
from .params import SpikingParams
from .rate_code import RateCode, lif_rate, rate_code
from .runner import TARGETS
from .translation import SpikingCircuit

__all__ = ["TARGETS", "SpikingParams", "SpikingCircuit", "RateCode", "lif_rate", "rate_code", "cut_epochs", "spike_trains"]
