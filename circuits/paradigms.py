"""Stimulus protocols: trial-structured inputs with labels, for rate and spiking circuits.

A protocol is a small frozen dataclass whose :meth:`build` returns a :class:`Stimulus`:
``B`` *blocks* (independent sequences, batched on the circuit's trial axis), each a
sequence of ``S`` *slots* at common onset times. Slot ``j`` of block ``b`` shows pattern
``schedule[b, j]`` (a row of ``patterns``) for ``duration_ms``, or nothing when the entry is
``-1`` (an omission). Every slot carries labels (``kind``: standard / deviant / control /
omission / repeat ..., repetition number, deviance ...), every block carries its condition
(deviant probability, deviance, seed). Because onsets are common to all blocks, a circuit
can cut every block into peri-stimulus epochs in one batched pass.

The *cue* is the temporal expectation of a rhythmic sequence: 1 during every scheduled
slot window (omitted ones included), 0 between them. Circuits gate their top-level prior
with it, so an expectation is only voiced when a stimulus is due (Wacongne et al. 2012 use
the same device). Static protocols (bars) leave the cue at 1 throughout.

Units: times in ms; pattern entries are input rates in the circuit's rate units.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np

from pcsim.errors import ConfigError

__all__ = [
    "Stimulus",
    "tone",
    "ToneSequence",
    "Oddball",
    "ManyStandards",
    "Repetition",
    "Omission",
    "Bars",
]


@dataclass(frozen=True)
class Stimulus:
    """A batch of ``B`` stimulus sequences over ``S`` common slots.

    - ``patterns``: ``(K, n_in)`` float array, the stimulus vectors (rate units).
    - ``schedule``: ``(B, S)`` int array, pattern index shown in each slot, ``-1`` for none.
    - ``onsets_ms``: ``(S,)`` increasing slot onsets (ms, from the start of a block).
    - ``duration_ms``: how long each pattern stays on; ``total_ms``: block length (ms).
    - ``labels``: name -> ``(B, S)`` array of per-slot labels (strings or numbers).
    - ``conditions``: name -> ``(B,)`` array of per-block labels.
    - ``cue``: gate the prior by the slot windows (True) or keep it on (False).
    - ``noise_std``: standard deviation of white noise added to the input at every
      integration step (rate units), drawn from the circuit's seeded generator.
    """

    patterns: np.ndarray
    schedule: np.ndarray
    onsets_ms: np.ndarray
    duration_ms: float
    total_ms: float
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    conditions: dict[str, np.ndarray] = field(default_factory=dict)
    cue: bool = True
    noise_std: float = 0.0

    def __post_init__(self):
        p = np.asarray(self.patterns, dtype=np.float64)
        s = np.asarray(self.schedule)
        o = np.asarray(self.onsets_ms, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise ConfigError(f"Stimulus.patterns must be (K, n_in) with K, n_in >= 1, got shape {p.shape}")
        if not np.isfinite(p).all():
            raise ConfigError("Stimulus.patterns contains NaN or Inf")
        if s.ndim != 2 or s.shape[0] < 1 or not np.issubdtype(s.dtype, np.integer):
            raise ConfigError(f"Stimulus.schedule must be a (B, S) integer array with B >= 1, got {s.dtype} {s.shape}")
        if s.size and (s.min() < -1 or s.max() >= p.shape[0]):
            raise ConfigError(f"Stimulus.schedule entries must be -1 or a pattern index 0..{p.shape[0] - 1}")
        if o.shape != (s.shape[1],):
            raise ConfigError(f"Stimulus.onsets_ms must have one onset per slot ({s.shape[1]}), got shape {o.shape}")
        if o.size and (np.any(np.diff(o) <= 0) or o[0] < 0):
            raise ConfigError("Stimulus.onsets_ms must be non-negative and strictly increasing")
        if not self.duration_ms > 0:
            raise ConfigError(f"Stimulus.duration_ms must be > 0, got {self.duration_ms}")
        if o.size and self.total_ms < o[-1] + self.duration_ms:
            raise ConfigError(f"Stimulus.total_ms ({self.total_ms}) ends before the last slot ({o[-1] + self.duration_ms} ms)")
        if o.size > 1 and np.any(np.diff(o) < self.duration_ms):
            raise ConfigError("Stimulus slots overlap: onsets are closer than duration_ms")
        if not self.noise_std >= 0:
            raise ConfigError(f"Stimulus.noise_std must be >= 0, got {self.noise_std}")
        for name, lab in self.labels.items():
            if np.shape(lab) != s.shape:
                raise ConfigError(f"Stimulus label {name!r} must have the schedule's shape {s.shape}, got {np.shape(lab)}")
        for name, lab in self.conditions.items():
            if np.shape(lab) != (s.shape[0],):
                raise ConfigError(f"Stimulus condition {name!r} must have one entry per block ({s.shape[0]}), got {np.shape(lab)}")
        object.__setattr__(self, "patterns", p)
        object.__setattr__(self, "schedule", s.astype(np.int64))
        object.__setattr__(self, "onsets_ms", o)

    @property
    def blocks(self) -> int:
        """Number of blocks ``B`` (sequences simulated side by side)."""
        return self.schedule.shape[0]

    @property
    def slots(self) -> int:
        """Number of slots ``S`` per block."""
        return self.schedule.shape[1]

    @property
    def n_in(self) -> int:
        """Width of the input (number of input channels / pixels)."""
        return self.patterns.shape[1]

    def slot_index(self, t_ms: np.ndarray) -> np.ndarray:
        """For times ``t_ms`` (ms), the slot whose window ``[onset, onset + duration)`` contains
        each time, ``-1`` where none does."""
        t = np.asarray(t_ms, dtype=np.float64)
        last = np.searchsorted(self.onsets_ms, t, side="right") - 1
        on = (last >= 0) & (t < self.onsets_ms[np.maximum(last, 0)] + self.duration_ms)
        return np.where(on, last, -1)

    def render(self, t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The noiseless input ``(B, T, n_in)`` and cue ``(B, T)`` at times ``t_ms`` ``(T,)``.

        Convenient for plots and short runs; circuits render step by step instead."""
        active = self.slot_index(t_ms)
        idx = np.where(active[None, :] >= 0, self.schedule[:, np.maximum(active, 0)], -1)
        padded = np.vstack([self.patterns, np.zeros((1, self.n_in))])
        x = padded[idx]
        cue = (np.broadcast_to(active >= 0, idx.shape) if self.cue else np.ones(idx.shape, bool)).astype(np.float64)
        return x, cue

    def map_patterns(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Stimulus":
        """The same protocol with ``patterns`` replaced by ``fn(patterns)`` (``(K, n_in) -> (K, m)``),
        e.g. to cut a retina image into the patches a network sees."""
        return replace(self, patterns=np.asarray(fn(self.patterns), dtype=np.float64))

    def concat(self, other: "Stimulus") -> "Stimulus":
        """Blocks of ``self`` followed by the blocks of ``other`` (same slots, timing and
        input width); patterns are stacked and labels/conditions joined (missing ones become
        NaN or '')."""
        if self.slots != other.slots or not np.allclose(self.onsets_ms, other.onsets_ms) \
                or self.duration_ms != other.duration_ms or self.total_ms != other.total_ms:
            raise ConfigError("can only concatenate stimuli with the same slots, onsets, duration and length")
        if self.n_in != other.n_in or self.cue != other.cue or self.noise_std != other.noise_std:
            raise ConfigError("can only concatenate stimuli with the same input width, cue and noise")
        k = self.patterns.shape[0]
        sched = np.vstack([self.schedule, np.where(other.schedule >= 0, other.schedule + k, -1)])

        def join(a: dict, b: dict, na: tuple, nb: tuple) -> dict:
            out = {}
            for name in list(a) + [n for n in b if n not in a]:
                parts = []
                for d, shape in ((a, na), (b, nb)):
                    if name in d:
                        parts.append(np.asarray(d[name]))
                    else:
                        other_arr = np.asarray((b if d is a else a)[name])
                        fill = "" if other_arr.dtype.kind in "US" else np.nan
                        parts.append(np.full(shape, fill, dtype=object if fill == "" else float))
                out[name] = np.concatenate(parts, axis=0)
            return out

        return replace(
            self, patterns=np.vstack([self.patterns, other.patterns]), schedule=sched,
            labels=join(self.labels, other.labels, self.schedule.shape, other.schedule.shape),
            conditions=join(self.conditions, other.conditions, (self.blocks,), (other.blocks,)),
        )


def tone(frequency: float, n_channels: int, *, width: float = 1.5, amplitude: float = 1.0) -> np.ndarray:
    """A pure tone on a tonotopic array: a Gaussian bump ``(n_channels,)`` centred on channel
    ``frequency`` (in channel units; fractional values fall between channels) with standard
    deviation ``width`` channels and peak ``amplitude`` (rate units)."""
    if n_channels < 1 or width <= 0:
        raise ConfigError(f"tone needs n_channels >= 1 and width > 0, got {n_channels}, {width}")
    c = np.arange(n_channels, dtype=np.float64)
    return amplitude * np.exp(-0.5 * ((c - frequency) / width) ** 2)


def _slots(n: int, soa_ms: float, duration_ms: float, lead_ms: float) -> tuple[np.ndarray, float]:
    if n < 1 or soa_ms < duration_ms or duration_ms <= 0 or lead_ms < 0:
        raise ConfigError(f"need n >= 1, duration > 0 and soa >= duration, got n={n}, soa={soa_ms}, duration={duration_ms}")
    onsets = lead_ms + soa_ms * np.arange(n)
    return onsets, float(onsets[-1] + soa_ms)


@dataclass(frozen=True)
class ToneSequence:
    """Fields every tone sequence shares: ``n_channels`` of the tonotopic map, slots
    ``soa_ms`` apart from ``lead_ms`` on, each tone ``duration_ms`` long, Gaussian bumps of
    ``width`` channels and peak ``amplitude``, one block per seed in ``seeds``."""

    n_channels: int = field(default=32, metadata={"ge": 1})
    duration_ms: float = field(default=50.0, metadata={"gt": 0, "units": "ms"})
    soa_ms: float = field(default=300.0, metadata={"gt": 0, "units": "ms"})
    lead_ms: float = field(default=50.0, metadata={"ge": 0, "units": "ms"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"ge": 0, "nonempty": True})
    width: float = field(default=1.5, metadata={"gt": 0, "units": "channels"})
    amplitude: float = field(default=1.0, metadata={"gt": 0, "units": "rate units"})

    def _tones(self, freqs) -> np.ndarray:
        """The patterns ``(len(freqs), n_channels)`` of tones at ``freqs`` (channels)."""
        return np.stack([tone(f, self.n_channels, width=self.width, amplitude=self.amplitude) for f in freqs])


@dataclass(frozen=True)
class Oddball(ToneSequence):
    """Auditory-style oddball: standard tones with rare deviants.

    One block per (deviant probability, deviance, seed) combination. In each block, tone
    ``standard`` (channel units) plays in every slot except deviants, which sit ``deviance``
    channels higher and occur with probability ``p_deviant`` (never in the first
    ``lead_standards`` slots nor twice in a row, as in the field's pseudo-random sequences).
    Slots are ``soa_ms`` apart, each tone lasts ``duration_ms``; the first onset is at
    ``lead_ms``. Slot labels: ``kind`` ('standard'/'deviant'), ``since_deviant`` (slots since
    the last deviant); block conditions: ``p_deviant``, ``deviance``, ``seed``, ``paradigm``.
    """

    n_tones: int = field(default=200, metadata={"ge": 1})
    standard: float = field(default=10.0, metadata={"ge": 0, "units": "channels"})
    deviances: tuple[float, ...] = field(default=(4.0,), metadata={"gt": 0, "nonempty": True, "units": "channels"})
    p_deviants: tuple[float, ...] = field(default=(0.1,), metadata={"gt": 0, "le": 0.5, "nonempty": True})
    lead_standards: int = field(default=10, metadata={"ge": 0})

    def build(self) -> Stimulus:
        """The :class:`Stimulus` with ``len(p_deviants) * len(deviances) * len(seeds)`` blocks."""
        onsets, total = _slots(self.n_tones, self.soa_ms, self.duration_ms, self.lead_ms)
        if not self.deviances or not self.p_deviants or not self.seeds:
            raise ConfigError("Oddball needs at least one deviance, deviant probability and seed")
        for p in self.p_deviants:
            if not 0 < p <= 0.5:
                raise ConfigError(f"Oddball deviant probability must be in (0, 0.5], got {p}")
        devs = sorted(set(float(d) for d in self.deviances))
        freqs = [self.standard] + [self.standard + d for d in devs]
        patterns = self._tones(freqs)
        sched, kinds, since, cond = [], [], [], {"p_deviant": [], "deviance": [], "seed": []}
        for p in self.p_deviants:
            for d in self.deviances:
                for seed in self.seeds:
                    dev = self._deviant_slots(float(p), int(seed))
                    row = np.where(dev, 1 + devs.index(float(d)), 0)
                    sched.append(row)
                    kinds.append(np.where(dev, "deviant", "standard"))
                    since.append(_since(dev))
                    cond["p_deviant"].append(float(p))
                    cond["deviance"].append(float(d))
                    cond["seed"].append(int(seed))
        conditions = {k: np.asarray(v) for k, v in cond.items()}
        conditions["paradigm"] = np.full(len(sched), "oddball", dtype=object)
        return Stimulus(patterns, np.asarray(sched), onsets, self.duration_ms, total,
                        labels={"kind": np.asarray(kinds, dtype=object), "since_deviant": np.asarray(since)},
                        conditions=conditions)

    def _deviant_slots(self, p: float, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        dev = np.zeros(self.n_tones, bool)
        j = self.lead_standards
        while j < self.n_tones:
            if rng.random() < p / (1 - p):
                dev[j] = True
                j += 2  # no two deviants in a row
            else:
                j += 1
        return dev


def _since(dev: np.ndarray) -> np.ndarray:
    out = np.zeros(dev.shape, np.int64)
    count = 10**6
    for j, d in enumerate(dev):
        out[j] = count
        count = 0 if d else count + 1
    return out


@dataclass(frozen=True)
class ManyStandards(ToneSequence):
    """The many-standards control for an oddball: ``n_tone_types`` equiprobable tones in
    random order, spaced ``spacing`` channels apart starting at ``lowest``. The tone at
    ``target`` (the oddball's deviant frequency) is labelled 'control' and occurs as often
    as the deviant did (probability ``1/n_tone_types``), but no regularity is broken when it
    plays: deviant minus control isolates genuine mismatch from stimulus-specific adaptation.
    """

    n_tones: int = 200
    target: float = 14.0
    lowest: float = 2.0
    spacing: float = 4.0
    n_tone_types: int = 8

    def build(self) -> Stimulus:
        """The :class:`Stimulus`, one block per seed; ``kind`` is 'control' or 'other'."""
        onsets, total = _slots(self.n_tones, self.soa_ms, self.duration_ms, self.lead_ms)
        freqs = self.lowest + self.spacing * np.arange(self.n_tone_types)
        hit = np.flatnonzero(np.isclose(freqs, self.target))
        if hit.size != 1:
            raise ConfigError(f"ManyStandards target {self.target} is not one of the tones {freqs.tolist()}")
        if freqs.max() >= self.n_channels:
            raise ConfigError(f"ManyStandards tones reach channel {freqs.max()} but there are {self.n_channels} channels")
        patterns = self._tones(freqs)
        sched = np.stack([np.random.default_rng(int(s)).integers(0, self.n_tone_types, self.n_tones) for s in self.seeds])
        kind = np.where(sched == hit[0], "control", "other").astype(object)
        return Stimulus(patterns, sched, onsets, self.duration_ms, total,
                        labels={"kind": kind, "tone": freqs[sched]},
                        conditions={"seed": np.asarray(self.seeds), "p_deviant": np.full(len(self.seeds), 1 / self.n_tone_types),
                                    "paradigm": np.full(len(self.seeds), "many_standards", dtype=object)})


@dataclass(frozen=True)
class Repetition(ToneSequence):
    """Repetition trains (roving standard): each block plays ``n_trains`` trains; a train is
    one tone repeated ``n_repeats`` times, and consecutive trains change tone (drawn from
    ``frequencies``, never the same twice in a row). Slot labels: ``repetition`` (1 for the
    first tone of a train, which is a deviant for the preceding train), ``tone`` (its channel),
    ``kind`` ('first' or 'repeat')."""

    frequencies: tuple[float, ...] = field(default=(6.0, 12.0, 18.0, 24.0),
                                           metadata={"ge": 0, "nonempty": True, "units": "channels"})
    n_repeats: int = field(default=8, metadata={"ge": 1})
    n_trains: int = field(default=12, metadata={"ge": 1})

    def build(self) -> Stimulus:
        """The :class:`Stimulus`, one block per seed."""
        if len(self.frequencies) < 2 or self.n_repeats < 1 or self.n_trains < 1:
            raise ConfigError("Repetition needs at least two frequencies, n_repeats >= 1 and n_trains >= 1")
        n = self.n_repeats * self.n_trains
        onsets, total = _slots(n, self.soa_ms, self.duration_ms, self.lead_ms)
        patterns = self._tones(self.frequencies)
        rows = []
        for s in self.seeds:
            rng = np.random.default_rng(int(s))
            seq, prev = [], -1
            for _ in range(self.n_trains):
                k = int(rng.choice([i for i in range(len(self.frequencies)) if i != prev]))
                seq += [k] * self.n_repeats
                prev = k
            rows.append(seq)
        sched = np.asarray(rows)
        rep = np.tile(np.arange(1, self.n_repeats + 1), self.n_trains)[None, :].repeat(len(rows), 0)
        return Stimulus(patterns, sched, onsets, self.duration_ms, total,
                        labels={"repetition": rep, "tone": np.asarray(self.frequencies, float)[sched],
                                "kind": np.where(rep == 1, "first", "repeat").astype(object)},
                        conditions={"seed": np.asarray(self.seeds),
                                    "paradigm": np.full(len(rows), "repetition", dtype=object)})


@dataclass(frozen=True)
class Omission(ToneSequence):
    """A regular tone sequence in which a tone is occasionally left out: tone ``frequency``
    in every slot except omissions (probability ``p_omission``, never in the first
    ``lead_standards`` slots nor twice in a row). The cue still marks the omitted slot as
    due, so a circuit that learned the rhythm predicts a tone that does not come. Slot
    label ``kind``: 'standard' or 'omission'."""

    n_tones: int = 200
    frequency: float = 10.0
    p_omission: float = 0.1
    lead_standards: int = 10

    def build(self) -> Stimulus:
        """The :class:`Stimulus`, one block per seed; omitted slots have schedule ``-1``."""
        onsets, total = _slots(self.n_tones, self.soa_ms, self.duration_ms, self.lead_ms)
        if not 0 < self.p_omission <= 0.5:
            raise ConfigError(f"Omission probability must be in (0, 0.5], got {self.p_omission}")
        odd = Oddball(n_tones=self.n_tones, lead_standards=self.lead_standards)
        rows, kinds = [], []
        for s in self.seeds:
            om = odd._deviant_slots(self.p_omission, int(s))
            rows.append(np.where(om, -1, 0))
            kinds.append(np.where(om, "omission", "standard"))
        patterns = self._tones([self.frequency])
        return Stimulus(patterns, np.asarray(rows), onsets, self.duration_ms, total,
                        labels={"kind": np.asarray(kinds, dtype=object)},
                        conditions={"seed": np.asarray(self.seeds),
                                    "paradigm": np.full(len(rows), "omission", dtype=object)})


@dataclass(frozen=True)
class Bars:
    """Bars of varying length on a retina, for end-stopping (one block per length).

    The retina is ``height x width`` pixels; a bar of ``thickness`` pixels and length ``l``
    (for each ``l`` in ``lengths``) is centred at (``center_row``, ``center_col``), horizontal
    or vertical (``orientation``), at ``contrast`` above a zero (mean-luminance) background.
    It appears at ``onset_ms`` and stays for ``duration_ms``; the cue is always on (a static
    scene, no temporal expectation). Condition ``length`` labels each block.
    Patterns are flattened row-major images ``(len(lengths), height * width)``.
    """

    height: int = 16
    width: int = 26
    lengths: tuple[int, ...] = field(default=(2, 4, 6, 8, 10, 12, 14, 16, 20, 26),
                                     metadata={"ge": 1, "nonempty": True, "units": "px"})
    thickness: int = field(default=2, metadata={"ge": 1, "units": "px"})
    center_row: float | None = None
    center_col: float | None = None
    orientation: Literal["horizontal", "vertical"] = "horizontal"
    contrast: float = field(default=1.0, metadata={"gt": 0, "units": "fraction of the grey range"})
    onset_ms: float = field(default=50.0, metadata={"ge": 0, "units": "ms"})
    duration_ms: float = field(default=400.0, metadata={"gt": 0, "units": "ms"})

    def images(self) -> np.ndarray:
        """The bar images ``(len(lengths), height, width)``."""
        if self.orientation not in ("horizontal", "vertical"):
            raise ConfigError(f"Bars orientation must be 'horizontal' or 'vertical', got {self.orientation!r}")
        if not self.lengths or min(self.lengths) < 1 or self.thickness < 1:
            raise ConfigError("Bars need positive lengths and thickness")
        H, W = self.height, self.width
        cr = (H - 1) / 2 if self.center_row is None else self.center_row
        cc = (W - 1) / 2 if self.center_col is None else self.center_col
        rows, cols = np.arange(H)[:, None], np.arange(W)[None, :]
        out = []
        for length in self.lengths:
            along, across = (cols - cc, rows - cr) if self.orientation == "horizontal" else (rows - cr, cols - cc)
            img = (np.abs(along) < length / 2) & (np.abs(across) < self.thickness / 2)
            out.append(self.contrast * img.astype(np.float64))
        return np.stack(out)

    def build(self) -> Stimulus:
        """The :class:`Stimulus`: one block and one slot per bar length."""
        imgs = self.images()
        n = len(self.lengths)
        return Stimulus(imgs.reshape(n, -1), np.arange(n)[:, None], np.array([self.onset_ms]), self.duration_ms,
                        self.onset_ms + self.duration_ms, labels={"length": np.asarray(self.lengths)[:, None]},
                        conditions={"length": np.asarray(self.lengths)}, cue=False)
