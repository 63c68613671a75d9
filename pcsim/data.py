"""Data sets that need no download, and the checks every array passes at the boundary.

``load_digits`` gives scikit-learn's bundled 8x8 digits (1797 images, 64 pixels, 10
classes) with a fixed stratified train/test split, pixels standardised with the training
statistics, and one-hot targets. Arrays are float tensors ``(samples, features)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, DataError

Tensor = torch.Tensor


@dataclass
class Classification:
    """A labelled train/test split: ``x_*`` ``(N, n_in)``, one-hot ``y_*`` ``(N, n_classes)``, integer ``labels_*`` ``(N,)``."""

    x_train: Tensor
    y_train: Tensor
    labels_train: Tensor
    x_test: Tensor
    y_test: Tensor
    labels_test: Tensor
    name: str = ""

    @property
    def n_features(self) -> int:
        """Input width ``n_in``."""
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of classes (width of the one-hot targets)."""
        return self.y_train.shape[1]


def check_array(a: np.ndarray, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``a`` as a float64 array after checking its dimensionality and that it holds no NaN/Inf (DataError naming ``name`` and the first bad index)."""
    a = np.asarray(a)
    if ndim is not None and a.ndim != ndim:
        raise DataError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in np.argwhere(bad)[0])})")
    return a


def check_labels(labels: np.ndarray, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Check integer class labels ``(n,)`` in ``[0, n_classes)`` and return them as int64."""
    lab = check_array(labels, name, ndim=1)
    if lab.shape[0] != n:
        raise DataError(f"{name} has {lab.shape[0]} entries but the data has {n} samples")
    if (lab != np.round(lab)).any() or lab.min() < 0 or lab.max() >= n_classes:
        i = int(np.argwhere((lab != np.round(lab)) | (lab < 0) | (lab >= n_classes))[0, 0])
        raise DataError(f"{name}[{i}] = {lab[i]} is not a class index in [0, {n_classes})")
    return lab.astype(np.int64)


def classification_split(
    x_train, labels_train, x_test, labels_test, *, n_classes: int | None = None, standardise: bool = True,
    device: str = "cpu", dtype: torch.dtype = torch.float32, name: str = "",
) -> Classification:
    """Validate arrays ``x_* (N, n_in)`` and integer ``labels_* (N,)`` and build a :class:`Classification`.

    Features are standardised with the training mean and standard deviation (constant
    features left at zero); targets become one-hot rows.
    """
    xtr = check_array(x_train, "x_train", 2)
    xte = check_array(x_test, "x_test", 2)
    if xtr.shape[1] != xte.shape[1]:
        raise DataError(f"x_train has {xtr.shape[1]} features but x_test has {xte.shape[1]}")
    if n_classes is None:
        lt, le = check_array(labels_train, "labels_train", 1), check_array(labels_test, "labels_test", 1)
        if lt.size == 0 or le.size == 0:
            raise DataError("labels_train and labels_test must not be empty")
        n_classes = int(max(lt.max(), le.max())) + 1
    k = int(n_classes)
    ltr = check_labels(labels_train, xtr.shape[0], k, "labels_train")
    lte = check_labels(labels_test, xte.shape[0], k, "labels_test")
    if standardise:
        mean, std = xtr.mean(0), xtr.std(0)
        std[std == 0] = 1.0
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    eye = np.eye(k)
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return Classification(
        t(xtr), t(eye[ltr]), torch.as_tensor(ltr, device=device),
        t(xte), t(eye[lte]), torch.as_tensor(lte, device=device), name,
    )


def split_indices(n: int, labels: np.ndarray | None, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices ``(n_train,)``, ``(n_test,)`` of ``n`` examples: scikit-learn's
    ``train_test_split`` with ``test_fraction`` of them in the test set, stratified by ``labels``
    ``(n,)`` when given, from ``seed``, in its shuffled order. The one split of the classification
    and generative data sets, so both test on the same examples at the same seed."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(n), test_size=test_fraction, random_state=seed, stratify=labels)


def load_digits(test_fraction: float = 0.2, split_seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Classification:
    """scikit-learn's 8x8 digits with a fixed stratified split (``split_seed``): 1437 train / 360 test at 0.2.

    Inputs are 64 standardised pixel intensities, targets one-hot over 10 classes.
    """
    from sklearn.datasets import load_digits as _load

    d = _load()
    tr, te = split_indices(len(d.target), d.target, test_fraction, split_seed)
    return classification_split(d.data[tr], d.target[tr], d.data[te], d.target[te], n_classes=10, device=device,
                                dtype=dtype, name="digits")


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True) -> list[Tensor]:
    """Shuffled index batches ``(batch_size,)`` covering ``n`` samples once; the permutation comes from ``generator``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    perm = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    if stop == 0:
        raise DataError(f"batch_size {batch_size} is larger than the {n} training samples")
    return list(perm[:stop].split(batch_size))
