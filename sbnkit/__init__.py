"""sbnkit: stochastic binary networks in PyTorch."""

__version__ = "0.2.0"

from . import estimators, models, noise, optim, units, weights
from .errors import UserError
from .inference import evaluate_batches, predict_proba, recalibrate_batch_norm
from .network import SBN, ChannelAffine, Head, Stage
from .units import BinaryUnit, Rule, using_rule
from .weights import BernoulliWeight, binarize, make_binary, using_weight_mode

__all__ = [
    "SBN",
    "BernoulliWeight",
    "BinaryUnit",
    "ChannelAffine",
    "Head",
    "Rule",
    "Stage",
    "UserError",
    "binarize",
    "estimators",
    "evaluate_batches",
    "make_binary",
    "models",
    "noise",
    "optim",
    "predict_proba",
    "recalibrate_batch_norm",
    "units",
    "using_rule",
    "using_weight_mode",
    "weights",
]
