"""The engine's experiments return Datasets that meet pcsim's result conventions
(:func:`pcsim.results.convention_problems`: units and long_name on every variable and
coordinate, distinct long_names, times in seconds), on their smallest fast configs; and the
trajectories figure draws a clamped layer as clamped."""

from pathlib import Path

import numpy as np
import pytest

from pcsim.config import load_experiment
from pcsim.registry import RunContext
from pcsim.results import convention_problems

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

SMALL = {
    "pc_vs_bp_digits": ["training.epochs=1", "training.batch_size=256", 'training.rules=["pc", "bp"]', "network.hidden=[8]", "inference.steps=3",
                        "alignment.steps=[1, 3]", "alignment.nudges=[1.0, 0.1]", "alignment.probe_size=16"],
    "inference_dynamics": ["dynamics.pretrain_epochs=1", "inference.steps=5", "network.hidden=[8]", "dynamics.trials=4"],
}


@pytest.fixture(scope="module", params=list(SMALL))
def result(request, tmp_path_factory):
    module, config = load_experiment(CONFIGS / f"{request.param}.toml", SMALL[request.param])
    out = module.run(config, RunContext(tmp_path_factory.mktemp(request.param), "cpu", progress=False))
    return request.param, module, config, out


def test_experiment_results_meet_the_conventions(result):
    name, _, _, out = result
    assert convention_problems(out.dataset) == []


def test_relaxation_time_is_in_seconds(result):
    name, _, config, out = result
    if name != "inference_dynamics":
        pytest.skip("no time axis")
    t = out.dataset.time.values
    np.testing.assert_allclose(np.diff(t), config.inference.dt * 1e-3)  # dt is in ms, time in s


def test_trajectories_draw_the_clamped_label_flat_and_say_so(result):
    name, module, _, out = result
    if name != "inference_dynamics":
        pytest.skip("no trajectories figure")
    ds = out.dataset
    L = int(ds.layer.values[-1])
    assert ds.clamped.values.tolist() == [1] + [0] * (L - 1) + [1]
    fig = module.plot(ds)["trajectories"]
    axes = fig.axes
    assert "clamped" in axes[-1].get_title() and all("clamped" not in a.get_title() for a in axes[:-1])
    assert "clamped layers: 0, " + str(L) in fig._suptitle.get_text()
    for line in axes[-1].get_lines():  # the label layer: flat (it does not relax)
        y = np.asarray(line.get_ydata())
        assert np.ptp(y) == 0
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    energy = module.plot(ds)["energy"]
    renderer = FigureCanvasAgg(energy).get_renderer()
    legend, ax = energy.axes[0].get_legend(), energy.axes[0]
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # outside the axes: covers no curve
