"""Helpers shared by the estimator tests: a seeded toy network, losses, one gradient call.

The PSA authors' trained 2-5-5-5-1 network is not part of this repository (its source has no
licence). Tests that reproduce the paper on it take its path from ``SBNKIT_AUTHORS_NETWORK`` and
are skipped with that reason when the variable is unset.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbnkit import models
from sbnkit.data.idx import write_idx
from sbnkit.data.toy import make_toy
from sbnkit.noise import Logistic

AUTHORS_NETWORK_VAR = "SBNKIT_AUTHORS_NETWORK"


def logistic_loss(eta, y):
    return F.softplus(-y * eta[:, 0])


def ce(eta, y):
    """Per-example cross-entropy (cheaper than F.cross_entropy for tiny batches on busy CPUs)."""
    return torch.logsumexp(eta, 1) - eta.gather(1, y[:, None])[:, 0]


def toy_net(seed: int = 0):
    """A seeded float64 2-5-5-5-1 SBN on the 200-point toy set (y = ±1).

    Weights are drawn N(0, 2²) and biases N(0, 1): large enough that the units' firing
    probabilities spread over (0, 1), as in a trained network, so every layer's gradient is
    far from zero and ST is visibly biased.
    """
    gen = torch.Generator().manual_seed(seed)
    model = models.mlp((2,), 1, hidden=(5, 5, 5)).double()
    with torch.no_grad():
        for p in model.parameters():
            scale = 2.0 if p.dim() == 2 else 1.0
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x, y = make_toy(seed=1)
    return model, x, y


def authors_network_path() -> Path:
    """The authors' network file named by ``SBNKIT_AUTHORS_NETWORK``; skips the test otherwise."""
    value = os.environ.get(AUTHORS_NETWORK_VAR, "")
    if not value:
        pytest.skip(
            f"{AUTHORS_NETWORK_VAR} is not set: it names the PSA authors' network JSON, "
            "which is not part of the repository"
        )
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"{AUTHORS_NETWORK_VAR}={value} does not name a file")
    return path


def gradient(est, model, x, y, loss_fn):
    """``(loss value, {parameter name: gradient})`` of one call."""
    model.zero_grad()
    loss = est.loss(model, x, y, loss_fn)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def fake_fmnist(folder: Path, n_train: int = 60, n_test: int = 30) -> Path:
    """A tiny IDX data set with the Fashion-MNIST file names (gzipped) in ``folder``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, np.uint8))
    return folder


class TableNoise(Logistic):
    """Logistic noise whose draws the test sets (``current``), so that a batched pass and a loop
    of single passes see the same noise."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self.current = None

    def sample(self, like):
        assert like.shape == self.current.shape
        return self.current

    def sample_sign(self, a):
        return torch.where(a >= self.sample(a), 1.0, -1.0).to(a.dtype)
