"""Natural-image patches, the data set the end-stopping hierarchy learns from.

The two photographs shipped with scikit-learn, pre-filtered as Rao & Ballard (1999) did
(grey levels, a centre-surround difference of Gaussians, unit pixel variance), cut into
random patches: :class:`NaturalPatches` draws seeded batches of them, in the form
:func:`pcsim.training.train` iterates over. No file is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pcsim.errors import ConfigError, DataError

__all__ = ["dog_filter", "whitened_images", "sample_patches", "NaturalPatches"]


def dog_filter(image: np.ndarray, center_sigma: float, surround_sigma: float) -> np.ndarray:
    """Difference-of-Gaussians (centre-surround) filtering of ``image`` ``(H, W)``: the
    image blurred with standard deviation ``center_sigma`` minus the image blurred with
    ``surround_sigma`` (px), outside the image taken as 0 (the mean luminance). Returns an
    ``(H, W)`` float64 array in the image's units."""
    from scipy.ndimage import gaussian_filter

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise DataError(f"image: dog_filter needs a 2-D image, got shape {img.shape}")
    return gaussian_filter(img, center_sigma, mode="constant") - gaussian_filter(img, surround_sigma, mode="constant")


def whitened_images(center_sigma: float = 1.0, surround_sigma: float = 3.0, border: int = 12) -> tuple[list[np.ndarray], float]:
    """The two photographs shipped with scikit-learn (china, flower), pre-filtered as Rao &
    Ballard (1999) did: grey levels in [0, 1] (ITU-R 601 luma), :func:`dog_filter`, ``border``
    px cropped from every side, then divided by one common scale so that the pixels of
    both images together have unit variance. Returns ``(images, scale)``: a list of two
    ``(H, W)`` float64 arrays (dimensionless) and the scale (grey-level units per unit),
    by which any stimulus filtered the same way must also be divided."""
    from sklearn.datasets import load_sample_images

    luma = np.array([0.299, 0.587, 0.114])
    filtered = []
    for rgb in load_sample_images().images:
        grey = rgb.astype(np.float64) @ luma / 255.0
        f = dog_filter(grey, center_sigma, surround_sigma)
        if border:
            f = f[border:-border, border:-border]
        filtered.append(f)
    scale = float(np.sqrt(np.mean(np.concatenate([f.ravel() for f in filtered]) ** 2)))
    return [f / scale for f in filtered], scale


def sample_patches(images: list[np.ndarray], n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` patches ``height x width`` cut at uniformly random positions from ``images``
    (each image equally likely), flattened row-major: ``(n, height * width)`` float32."""
    if n < 1:
        raise ConfigError(f"n: need n >= 1 patches, got {n}")
    for k, img in enumerate(images):
        if img.shape[0] < height or img.shape[1] < width:
            raise DataError(f"images[{k}] ({img.shape}) is smaller than a {height}x{width} patch")
    which = rng.integers(0, len(images), n)
    out = np.empty((n, height, width), dtype=np.float32)
    for i, k in enumerate(which):
        img = images[k]
        r = rng.integers(0, img.shape[0] - height + 1)
        c = rng.integers(0, img.shape[1] - width + 1)
        out[i] = img[r:r + height, c:c + width]
    return out.reshape(n, -1)


@dataclass
class NaturalPatches:
    """Batches of ``height x width`` whitened natural-image patches.

    ``images``: the whitened photographs (``(H, W)`` arrays, as :func:`whitened_images`
    returns them); ``batches`` batches of ``batch_size`` patches per pass, drawn from a
    numpy generator seeded with ``seed`` that keeps running from pass to pass (every batch
    is fresh). Iterating yields float32 tensors ``(batch_size, height * width)`` on
    ``device``; ``len`` is ``batches``."""

    images: list
    height: int
    width: int
    batches: int
    batch_size: int
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.batches < 1 or self.batch_size < 1:
            raise ConfigError(f"NaturalPatches needs batches >= 1 and batch_size >= 1, got {self.batches}, {self.batch_size}")
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            x = sample_patches(self.images, self.batch_size, self.height, self.width, self._rng)
            yield torch.as_tensor(x, device=self.device)
