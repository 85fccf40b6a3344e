"""The results of a gradient-accuracy study as dataclasses; :func:`to_json` gives the
``gradeval.json`` object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .stats import Curve, Slope

if TYPE_CHECKING:
    from .paper import Findings, PaperComparison
    from .training import TrainingRecord

__all__ = [
    "EqualTime",
    "LayerResult",
    "MethodResult",
    "NetworkResult",
    "Reference",
    "ReferenceKind",
    "StudyResults",
    "to_json",
]

ReferenceKind = Literal["exact", "arm", "reinforce"]


@dataclass
class LayerResult(Curve):
    """One method's errors on one parameter group: the :class:`~.stats.Curve` over ``M``, the
    relative bias ``||E ĝ - g|| / ||g||``, the log-log slope of the RMSE and the single-sample
    split ``rmse(M)² ≈ bias2 + variance / M`` (relative to ``||g||²``)."""

    relative_bias: float
    slope: Slope
    bias2: float
    variance: float


@dataclass
class MethodResult:
    """One method on one network: its estimator and options, the mean of its loss values, the
    time of drawing its samples (wall and CPU, batched and split per sample), the time of one
    plain ``loss().backward()`` on the batch (``time_per_sample_s``), and per layer
    :class:`LayerResult`."""

    estimator: str
    options: dict[str, Any]
    loss_value_mean: float
    time_sampling_s: float
    cpu_sampling_s: float
    time_per_sample_s: float | None
    layers: dict[str, LayerResult]


@dataclass
class Reference:
    """The reference gradient: ``exact`` enumeration, or the mean of ``samples`` independent
    samples of an unbiased estimator (``arm`` or ``reinforce`` with a baseline). ``relative_se``
    per layer: the reference's standard error ``sqrt(V_ref/M_ref)`` over its norm (0 for exact);
    ``note`` says how the errors were corrected for it."""

    kind: ReferenceKind
    samples: int
    expected_loss: float
    grad_norm: dict[str, float]
    relative_se: dict[str, float]
    time_s: float
    note: str


@dataclass
class EqualTime:
    """The comparison at equal time: each method averages the largest grid ``M`` whose samples
    take at most ``budget_s`` (the slowest method's time per sample), and ``best`` names the
    method with the lowest RMSE at that ``M`` per layer."""

    budget_s: float
    M: dict[str, int]
    rmse: dict[str, dict[str, float]]
    best: dict[str, str]


@dataclass
class NetworkResult:
    """Everything measured on one network: the reference, each method's results, the methods
    skipped (with the reason), the most accurate method per layer at ``M = 1`` and at equal
    time; on the toy network also the paper's values, the comparison with them and the
    findings (:mod:`.paper`)."""

    exact_expected_loss: float | None
    exact_grad_norm: dict[str, float]
    time_exact_s: float
    reference: Reference
    methods: dict[str, MethodResult]
    skipped: dict[str, str] = field(default_factory=dict)
    best_at_m1: dict[str, str] = field(default_factory=dict)
    equal_time: EqualTime | None = None
    findings: Findings | None = None
    paper_rmse_m1: dict[str, list[float]] | None = None
    paper_provenance: str | None = None
    paper_note: str | None = None
    paper_comparison: dict[str, PaperComparison] | None = None
    time_study_s: float | None = None


def to_json(obj: Any) -> Any:
    """``obj`` with every dataclass turned into a dict, recursively (JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


@dataclass
class StudyResults:
    """A study's ``gradeval.json``: its configuration, the REINFORCE training record (toy
    checkpoints only), the results per network and the timings."""

    config: dict[str, Any]
    training: TrainingRecord | None
    networks: dict[str, NetworkResult]
    timings: dict[str, float | None] = field(default_factory=dict)
