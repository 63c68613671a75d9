"""``pcsim bench generative`` times the models as the shipped experiment builds them."""

from dataclasses import asdict

from pcsim.config import load_config
from pcsim.generative import bench


def test_the_benchmark_times_the_shipped_settings():
    """The benchmark's models and its plain PyTorch VAE use configs/generative_digits.toml's decoder,
    batch size and learning rate (it once restated them by hand, at another learning rate)."""
    shipped = load_config(bench.SHIPPED)
    out = bench.bench(["vae"], epochs=1, repeats=1, seed=0)
    assert (out["batch"], out["lr"]) == (shipped.training.batch_size, shipped.training.lr)
    model = bench._build("vae", bench._config(1, 0), 64)
    assert (model.latent_dim, tuple(model.hidden), model.lr, model.batch_size) == (
        shipped.decoder.latent_dim, tuple(shipped.decoder.hidden), shipped.training.lr, shipped.training.batch_size)
    plain = bench.plain_vae_fit(bench.digits().x_train[:64].double(), 1, 32, shipped.training.lr, 0,
                                shipped.decoder.latent_dim, shipped.decoder.hidden[0])
    assert plain.enc[0].out_features == shipped.decoder.hidden[0] and plain.d == shipped.decoder.latent_dim
    assert asdict(bench._config(3, 2).training)["epochs"] == 3 and bench._config(3, 2).seed == 2
