"""The gradient-accuracy study: which estimator gives the best gradients for a model, and the
reproduction of Shekhovtsov, Yanush & Flach (2020, §5) on their toy network.

Modules: :mod:`.study` (config and orchestration), :mod:`.reference` (exact or sampled reference
gradient), :mod:`.sampling` (seeded batched estimates, time per sample), :mod:`.stats` (RMSE,
cosine, bias/variance, the reference-noise correction), :mod:`.results` (dataclasses),
:mod:`.source` (the user's model and batch), :mod:`.netfile` (the authors' network file and the
toy network), :mod:`.coords` (0/1 vs ±1 weights), :mod:`.training` (REINFORCE training of the toy
network), :mod:`.paper` (the paper's numbers and findings), :mod:`.report`, :mod:`.plots`,
:mod:`.cli`. Per-sample gradients are library code: :mod:`sbnkit.persample`.
"""

from ..data.toy import make_toy
from .cli import cli_main
from .methods import METHODS
from .netfile import load_network
from .reference import exact_gradient
from .stats import gradient_metrics
from .study import StudyConfig, run, run_model, study_network

__all__ = [
    "METHODS",
    "StudyConfig",
    "cli_main",
    "exact_gradient",
    "gradient_metrics",
    "load_network",
    "make_toy",
    "run",
    "run_model",
    "study_network",
]
