"""The gradient-accuracy study of the PSA paper (Shekhovtsov, Yanush & Flach 2020): toy data,
study, plots, CLI."""

from ..data.toy import make_toy
from .cli import cli_main
from .study import (
    METHODS,
    PerSampleCapture,
    exact_gradient,
    gradient_metrics,
    load_network,
    run,
    sample_gradients,
    study_network,
)

__all__ = [
    "METHODS",
    "PerSampleCapture",
    "cli_main",
    "exact_gradient",
    "gradient_metrics",
    "load_network",
    "make_toy",
    "run",
    "sample_gradients",
    "study_network",
]
