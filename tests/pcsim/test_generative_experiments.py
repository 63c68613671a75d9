"""The generative-baseline experiments end to end through the CLI, on tiny configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from pcsim.cli import main
from pcsim.results import convention_problems

ALL = ["pc", "hybrid_pc", "mcpc", "vae", "iwae", "flow", "helmholtz"]

TINY = ["--set", "training.epochs=1", "--set", "decoder.latent_dim=2", "--set", "decoder.hidden=[8]",
        "--set", "baselines.flow_hidden=[8]", "--set", "baselines.flow_transforms=2",
        "--set", "baselines.recognition_hidden=[8]", "--set", "pc.inference_steps=5",
        "--set", "data.max_train=100", "--set", "data.max_test=20", "--set", "data.num_samples=200",
        "--set", "evaluation.nll_samples=4", "--set", "evaluation.elbo_samples=1",
        "--set", "evaluation.completion_steps=2", "--set", "evaluation.gap_examples=10",
        "--set", "evaluation.gap_steps=2", "--set", "evaluation.steps=[0,3]",
        "--set", "evaluation.n_generated=20", "--set", "evaluation.classifier_max_iter=20", "--set", "evaluation.n_show=2"]


def _run(config, tmp_path, *extra):
    out = tmp_path / "out"
    assert main(["run", f"configs/{config}", "--out", str(out), *extra]) == 0
    return out, json.loads((out / "summary.json").read_text()), xr.open_dataset(out / "results.nc")


@pytest.mark.parametrize("config", ["generative_digits.toml", "generative_mnist1d.toml"])
def test_generative_experiment_writes_every_model_and_figure(config, tmp_path):
    out, summary, ds = _run(config, tmp_path, *TINY)
    assert convention_problems(ds) == []
    assert sorted(summary["models"]) == sorted(ALL)
    assert list(ds.model.values) == ALL and set(ds.dims) >= {"model", "epoch", "T"}
    for name in ("samples", "reconstructions", "nll", "amortisation"):
        assert (out / f"{name}.png").stat().st_size > 0
    # the flow's likelihood is exact, every other model's NLL has a Monte Carlo error
    assert summary["models"]["flow"]["nll_stderr"] == 0
    assert all(summary["models"][m]["nll_stderr"] > 0 for m in ALL if m != "flow")
    # PC's inference on the VAE's own decoder, from both starts, beside the VAE's amortised ELBO
    same = summary["same_decoder"]
    assert set(same["elbo_by_T"]) == {"T", "prior", "amortised"} and same["elbo_by_T"]["T"] == [0, 3]
    assert np.isfinite(same["amortised_elbo"]) and same["gap"] == pytest.approx(
        same["elbo_by_T"]["prior"][-1] - same["amortised_elbo"])
    assert ds.same_decoder_elbo.dims == ("seed", "start", "T")


def test_pc_elbo_does_not_fall_with_inference_steps(tmp_path):
    """PC's iterative inference descends the energy, so the Laplace ELBO after T = 20 steps is at
    least the one at T = 0 (the prior sweep), up to Monte Carlo noise; hybrid PC starts higher."""
    _, _, ds = _run("generative_digits.toml", tmp_path, *TINY, "--set", 'training.models=["pc","hybrid_pc"]',
                    "--set", "evaluation.steps=[0,20]", "--set", "evaluation.elbo_samples=10")
    pc = ds.elbo_vs_steps.sel(model="pc").isel(seed=0).values
    assert pc[1] >= pc[0] - 0.5
    assert np.isfinite(ds.elbo_vs_steps.sel(model="hybrid_pc").values).all()


def test_identifiability_writes_mcc_per_model_and_seed(tmp_path):
    out, summary, ds = _run("identifiability.toml", tmp_path, "--set", "models.epochs=2", "--set", "models.seeds=[0,1,2]",
                            "--set", "data.n_per_segment=20", "--set", "models.hidden=[8]",
                            "--set", "models.inference_steps=5",
                            "--set", 'models.models=["observations", "linear_ica", "vae", "ivae", "conditional_pc"]')
    assert convention_problems(ds) == []
    assert sorted(summary["models"]) == ["conditional_pc", "ivae", "linear_ica", "observations", "vae"]
    assert ds.mcc.shape == (5, 3) and ((ds.mcc >= 0) & (ds.mcc <= 1)).all()
    assert (out / "sources.png").exists() and (out / "mcc.png").exists()


def test_latent_climbing_metrics_accept_the_vae_and_the_flow():
    """amortisation_gap and pattern_completion climb log_joint by autograd: the VAE's (in z) and
    the flow's (in x) must be differentiable (both refused with 'not differentiable' before)."""
    import torch

    from pcsim.generative.flow import Flow
    from pcsim.generative.metrics import amortisation_gap, half_mask, pattern_completion
    from pcsim.generative.vae import VAE

    x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    observed = half_mask(40, 4)
    vae = VAE(2, (8,), epochs=1, batch_size=20).fit(x)
    flow = Flow(transforms=1, hidden=(8,), epochs=1, batch_size=20).fit(x)
    assert amortisation_gap(vae, x, steps=3, eval_samples=8).gap > -1.0
    for model in (vae, flow):
        assert np.isfinite(pattern_completion(model, x, observed, steps=3).error)
