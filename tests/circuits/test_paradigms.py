"""Stimulus protocols: statistics, labels, timing and validation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from circuits.paradigms import Bars, ManyStandards, Omission, Oddball, Repetition, Stimulus
from circuits.measures import condition_contrast, log_slope, power_spectrum, spectral_ratio, suppression_index
from pcsim.errors import DataError


@settings(max_examples=15, deadline=None)
@given(p=st.sampled_from([0.05, 0.1, 0.2, 0.3]), seed=st.integers(0, 10_000))
def test_oddball_deviant_rate_and_sequence_rules(p, seed):
    stim = Oddball(n_tones=3000, p_deviants=(p,), seeds=(seed,), lead_standards=10).build()
    dev = stim.labels["kind"][0] == "deviant"
    assert not dev[:10].any()
    assert not (dev[1:] & dev[:-1]).any(), "two deviants in a row"
    rate = dev[10:].mean()
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / 2990) + 0.01
    # deviants show the deviant pattern, standards the standard one
    assert set(stim.schedule[0, dev]) == {1} and set(stim.schedule[0, ~dev]) == {0}
    since = stim.labels["since_deviant"][0]
    j = np.flatnonzero(dev)[0]
    assert since[j + 1] == 0 and since[j + 2] == 1


def test_oddball_blocks_cover_the_condition_grid():
    stim = Oddball(deviances=(2.0, 5.0), p_deviants=(0.1, 0.2, 0.3), seeds=(0, 1), n_tones=40).build()
    assert stim.blocks == 12
    combos = set(zip(stim.conditions["p_deviant"], stim.conditions["deviance"], stim.conditions["seed"]))
    assert len(combos) == 12
    # the deviant of a block is `deviance` channels above the standard
    for b in range(stim.blocks):
        dev_pattern = stim.patterns[stim.schedule[b][stim.labels["kind"][b] == "deviant"][0]]
        assert np.argmax(dev_pattern) == 10 + stim.conditions["deviance"][b]


def test_many_standards_control_is_equiprobable():
    stim = ManyStandards(n_tones=4000, target=14.0, lowest=2.0, spacing=4.0, n_tone_types=6, seeds=(3,)).build()
    counts = np.bincount(stim.schedule[0], minlength=6) / 4000
    np.testing.assert_allclose(counts, 1 / 6, atol=0.03)
    assert (stim.labels["tone"][0][stim.labels["kind"][0] == "control"] == 14.0).all()
    with pytest.raises(ValueError, match="not one of the tones"):
        ManyStandards(target=15.0).build()


def test_repetition_trains_and_labels():
    stim = Repetition(n_repeats=5, n_trains=20, seeds=(0,)).build()
    sched = stim.schedule[0].reshape(20, 5)
    assert (sched == sched[:, :1]).all(), "a train repeats one tone"
    assert (sched[1:, 0] != sched[:-1, 0]).all(), "consecutive trains change tone"
    np.testing.assert_array_equal(stim.labels["repetition"][0], np.tile(np.arange(1, 6), 20))


def test_omission_keeps_the_cue_but_removes_the_tone():
    stim = Omission(n_tones=50, p_omission=0.2, seeds=(1,)).build()
    om = np.flatnonzero(stim.labels["kind"][0] == "omission")
    assert om.size > 0 and (stim.schedule[0, om] == -1).all()
    t = stim.onsets_ms[om[0]] + 10.0
    x, cue = stim.render(np.array([t, t + stim.duration_ms]))
    assert x[0, 0].max() == 0.0 and cue[0, 0] == 1.0 and cue[0, 1] == 0.0
    j = om[0] - 1
    x, _ = stim.render(np.array([stim.onsets_ms[j] + 1.0]))
    assert x[0, 0].max() > 0.9


@pytest.mark.parametrize("orientation", ["horizontal", "vertical"])
def test_bars_have_the_requested_extent(orientation):
    bars = Bars(height=16, width=26, lengths=(2, 6, 10, 16), thickness=2, orientation=orientation, center_row=7.5,
                center_col=12.5)
    imgs = bars.images()
    for img, length in zip(imgs, bars.lengths):
        assert img.sum() == length * 2
        rows, cols = np.nonzero(img)
        extent = (cols if orientation == "horizontal" else rows)
        assert extent.max() - extent.min() + 1 == length
    stim = bars.build()
    assert stim.blocks == 4 and stim.slots == 1 and not stim.cue
    np.testing.assert_array_equal(stim.conditions["length"], bars.lengths)


def test_stimulus_validation_names_the_problem():
    with pytest.raises(ValueError, match="schedule entries"):
        Stimulus(np.ones((2, 3)), np.array([[0, 2]]), np.array([0.0, 100.0]), 50.0, 200.0)
    with pytest.raises(ValueError, match="overlap"):
        Stimulus(np.ones((1, 3)), np.array([[0, 0]]), np.array([0.0, 30.0]), 50.0, 200.0)
    with pytest.raises(ValueError, match="NaN"):
        Stimulus(np.full((1, 3), np.nan), np.array([[0]]), np.array([0.0]), 50.0, 200.0)
    with pytest.raises(ValueError, match="label 'kind'"):
        Stimulus(np.ones((1, 3)), np.array([[0]]), np.array([0.0]), 50.0, 200.0, labels={"kind": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="deviant probability"):
        Oddball(p_deviants=(0.7,)).build()


def test_concat_offsets_patterns_and_fills_missing_labels():
    a = Oddball(n_tones=20, seeds=(0,)).build()
    b = Omission(n_tones=20, seeds=(0,)).build()
    c = a.concat(b)
    assert c.blocks == 2
    # block 2's tone is b's pattern, re-indexed after a's patterns
    np.testing.assert_array_equal(c.patterns[c.schedule[1][c.schedule[1] >= 0]], b.patterns[b.schedule[0][b.schedule[0] >= 0]])
    assert np.isnan(c.conditions["p_deviant"][1]) and c.conditions["paradigm"][1] == "omission"


def test_field_measures_against_closed_forms():
    """Spread: 0 for one pixel, L / sqrt(6) for an even L x L field (the RMS distance of a
    uniform square from its centre, sqrt(2 (L^2 - 1) / 12) on a pixel grid); orientedness: 0
    for an isotropic centre-surround blob, near 1 for a Gabor patch, whatever its sign."""
    from circuits.measures import field_orientedness, field_spread

    one = np.zeros((1, 16, 16))
    one[0, 3, 7] = -2.0
    assert field_spread(one)[0] == pytest.approx(0.0, abs=1e-12)
    assert field_spread(np.ones((1, 16, 16)))[0] == pytest.approx(np.sqrt(2 * (16**2 - 1) / 12))
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    blob = np.exp(-((r - 8) ** 2 + (c - 8) ** 2) / 4.5) - 0.5 * np.exp(-((r - 8) ** 2 + (c - 8) ** 2) / 18)
    gabor = np.exp(-((r - 8) ** 2 + (c - 8) ** 2) / 4.5) * np.cos(2 * np.pi * (r + c) / 5)
    ori = field_orientedness(np.stack([blob, gabor, -gabor]))
    assert ori[0] < 0.01 and ori[1] > 0.8 and ori[2] == pytest.approx(ori[1])
    assert field_spread(blob[None])[0] < field_spread(np.ones((1, 16, 16)))[0]
    with pytest.raises(DataError, match="fields"):
        field_spread(np.zeros((2, 16, 16)))


def test_principal_fraction_is_one_inside_the_subspace_and_zero_outside():
    from circuits.measures import principal_fraction

    rng = np.random.default_rng(0)
    # patches varying (s.d. 3, 2) along pixels 0 and 1 of a 3 x 3 field, little elsewhere
    x = rng.normal(size=(4000, 9)) * np.array([3.0, 2.0] + [0.1] * 7)
    fields = np.zeros((3, 3, 3))
    fields[0, 0, 0], fields[1, 0, 1], fields[2, 2, 2] = 1.0, -2.0, 1.0
    np.testing.assert_allclose(principal_fraction(fields, x, 2), [1.0, 1.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(principal_fraction(fields, x, 1), [1.0, 0.0, 0.0], atol=1e-3)


def test_measures_against_independent_values():
    assert suppression_index([1.0, 3.0, 4.0, 2.0]) == pytest.approx(0.5)
    assert suppression_index([1.0, 2.0, 3.0]) == 0.0
    with pytest.raises(ValueError, match="no positive"):
        suppression_index([0.0, 0.0])
    x = np.array([1, 2, 4, 8.0])
    assert log_slope(x, 3 - 2 * np.log(x)) == pytest.approx(-2.0)
    import xarray as xr

    t = np.arange(0, 4000, 1.0) / 1000.0  # s, the unit of every result's time
    rng = np.random.default_rng(0)
    fast = xr.DataArray(np.sin(2 * np.pi * 50 * t) + 0.1 * rng.normal(size=t.size), dims="time", coords={"time": t})
    slow = xr.DataArray(np.sin(2 * np.pi * 8 * t) + 0.1 * rng.normal(size=t.size), dims="time", coords={"time": t})
    pf, ps = power_spectrum(fast), power_spectrum(slow)
    # 1 ms steps in s still give exactly 1000 Hz sampling: 200 ms segments, bins on multiples of 5 Hz,
    # so the band edges (30, 80 Hz) fall on bins (an ulp off would move a whole 5 Hz bin out of a band)
    np.testing.assert_array_equal(power_spectrum(fast, segment_ms=200.0).frequency.values[:7], np.arange(0, 35, 5.0))
    assert abs(float(pf.frequency[int(np.argmax(pf.values))]) - 50) < 3 and abs(float(ps.frequency[int(np.argmax(ps.values))]) - 8) < 3
    assert float(spectral_ratio(pf)) > 100 > 0.01 > float(spectral_ratio(ps))
    # Parseval: the integrated density is the signal's variance
    assert float(pf.integrate("frequency")) == pytest.approx(float(fast.var()), rel=0.05)
    resp = xr.DataArray([1.0, 3.0, 2.0, 6.0], dims="trial",
                        coords={"kind": ("trial", ["s", "d", "s", "d"]), "g": ("trial", [0, 0, 1, 1])})
    out = condition_contrast(resp, "kind", "d", "s", by=("g",))
    np.testing.assert_allclose(out["difference"].values, [2.0, 4.0])
