"""The PSA paper's gradient-accuracy numbers and findings (Shekhovtsov, Yanush & Flach 2020),
and their check on a study's results."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .methods import PSA_ORDER_PREFIX
from .results import NetworkResult
from .stats import Slope

__all__ = [
    "PAPER_AGREEMENT_FACTOR",
    "PAPER_PROVENANCE",
    "PAPER_RMSE_M1",
    "BiasFloor",
    "ExactLossMismatch",
    "Findings",
    "LowestAtM1",
    "NeedMore",
    "PaperComparison",
    "SqrtSlope",
    "check_exact_loss",
    "compare_with_paper",
    "findings",
]

PAPER_PROVENANCE = (
    "read by eye from the authors' published plots (gradient-accuracy figure), about ±20%; "
    "layers 0-2 are the binary layers"
)
PAPER_RMSE_M1 = {  # the PSA paper's gradient-accuracy figure, relative RMSE at M = 1, layers 0-2
    100: {
        "psa": [0.16, 0.38, 0.43],
        "st": [0.22, 0.55, 0.55],
        "arm": [2.3, 2.6, 1.8],
        "reinforce": [14, 11, 6.5],
        "concrete_tau_1": [0.4, 0.55, 0.5],
        "concrete_tau_0.1": [7.8, 5.3, 2.0],
        "mean": [0.25, 0.41, 0.5],
    },
    2000: {
        "psa": [1.8, 3.6, 2.4],
        "st": [2.6, 4.4, 2.7],
        "arm": [6, 13, 8],
        "reinforce": [9, 19, 10],
        "concrete_tau_1": [3.7, 5.7, 3],
        "concrete_tau_0.1": [110, 55, 9],
        "mean": [8, 10.5, 3.9],
    },
}
PAPER_AGREEMENT_FACTOR = 1.5


class ExactLossMismatch(RuntimeError):
    """Our enumeration disagrees with the expected loss recorded in a network file."""


@dataclass
class PaperComparison:
    """One method's ``M = 1`` RMSE per binary layer, the paper's, their ratio, and whether every
    ratio lies within a factor :data:`PAPER_AGREEMENT_FACTOR`."""

    paper: list[float]
    ours: list[float]
    ratio: list[float]
    agrees: bool


@dataclass
class LowestAtM1:
    """PSA has the lowest RMSE at ``M = 1`` in every hidden layer; ``lowest``: who has it."""

    holds: bool
    lowest: dict[str, str]


@dataclass
class SqrtSlope(Slope):
    """PSA's last-hidden-layer slope is ``-1/2`` within 3 standard errors."""

    holds: bool = False


@dataclass
class BiasFloor:
    """ST's RMSE at the slope's largest ``M`` exceeds twice the pure-variance value in every
    hidden layer (the ratio per layer), with ST's relative bias."""

    holds: bool
    excess_over_variance: dict[str, float | None]
    relative_bias: dict[str, float]


@dataclass
class NeedMore:
    """ARM and REINFORCE need ``M >= 10`` (or more than the grid) to reach PSA's ``M = 1`` RMSE
    in every hidden layer; the ``M`` per method and layer (``None``: beyond the grid)."""

    holds: bool
    samples_to_match_psa_m1: dict[str, dict[str, int | None]]


@dataclass
class Findings:
    """The paper's qualitative findings checked on one network (``None``: the methods they need
    were not run)."""

    psa_lowest_at_m1: LowestAtM1 | None = None
    psa_last_hidden_sqrt: SqrtSlope | None = None
    st_floor: BiasFloor | None = None
    unbiased_need_more: NeedMore | None = None


def findings(res: NetworkResult) -> Findings:
    """The paper's findings (:class:`Findings`) on ``res``: PSA lowest at ``M = 1`` among the
    methods other than its ``psa_order_N`` variants; PSA's last-hidden slope ``-1/2``
    (:func:`~.stats.loglog_slope`); ST's bias floor; the unbiased estimators needing ``M >= 10``."""
    meth = res.methods
    if not meth:
        return Findings()
    hidden = list(next(iter(meth.values())).layers)[:-1]
    out = Findings()
    rivals = [k for k in meth if not k.startswith(PSA_ORDER_PREFIX)]
    if "psa" in meth and len(rivals) > 1:
        lowest = {nm: min(rivals, key=lambda k, nm=nm: meth[k].layers[nm].rmse[0]) for nm in hidden}
        out.psa_lowest_at_m1 = LowestAtM1(all(v == "psa" for v in lowest.values()), lowest)
    if "psa" in meth:
        sl = meth["psa"].layers[hidden[-1]].slope
        holds = sl.se is not None and abs(sl.slope + 0.5) <= 3 * sl.se
        out.psa_last_hidden_sqrt = SqrtSlope(sl.M, sl.slope, sl.se, holds)
    if "st" in meth:
        ratios: dict[str, float | None] = {}
        for nm in hidden:
            lay = meth["st"].layers[nm]
            m = lay.slope.M
            ratios[nm] = (
                None if m is None else lay.rmse[lay.M.index(m)] * math.sqrt(m) / lay.rmse[0]
            )
        out.st_floor = BiasFloor(
            all(r is not None and r > 2 for r in ratios.values()),
            ratios,
            {nm: meth["st"].layers[nm].relative_bias for nm in hidden},
        )
    if "psa" in meth and any(k in meth for k in ("arm", "reinforce")):
        need: dict[str, dict[str, int | None]] = {}
        for k in ("arm", "reinforce"):
            if k not in meth:
                continue
            need[k] = {}
            for nm in hidden:
                target = meth["psa"].layers[nm].rmse[0]
                lay = meth[k].layers[nm]
                hit = [m for m, r in zip(lay.M, lay.rmse, strict=True) if r <= target]
                need[k][nm] = hit[0] if hit else None
        out.unbiased_need_more = NeedMore(
            all(v is None or v >= 10 for d in need.values() for v in d.values()), need
        )
    return out


def compare_with_paper(
    res: NetworkResult, paper: dict[str, list[float]]
) -> dict[str, PaperComparison]:
    """Our ``M = 1`` RMSE over the paper's, per method and binary layer; ``agrees`` when every
    ratio lies within ``[1/1.5, 1.5]`` (the paper's values are read by eye, ±20%)."""
    out: dict[str, PaperComparison] = {}
    for name, vals in paper.items():
        if name not in res.methods:
            continue
        lays = res.methods[name].layers
        ours = [lays[f"layer{k}"].rmse[0] for k in range(len(vals))]
        ratios = [o / v for o, v in zip(ours, vals, strict=True)]
        agrees = all(1 / PAPER_AGREEMENT_FACTOR <= r <= PAPER_AGREEMENT_FACTOR for r in ratios)
        out[name] = PaperComparison(list(vals), ours, ratios, agrees)
    return out


def check_exact_loss(got: float | None, expected: float, source: str, tol: float = 1e-9) -> None:
    """Raise :class:`ExactLossMismatch` if our exact loss ``got`` (``None``: not computed)
    differs from ``expected`` by more than ``tol``."""
    if got is None or not abs(got - expected) <= tol:
        diff = math.inf if got is None else abs(got - expected)
        raise ExactLossMismatch(
            f"exact expected loss {got!r} of {source} differs from the recorded {expected!r} "
            f"by {diff:.3g} > {tol:g}; the enumeration or the file is wrong"
        )
