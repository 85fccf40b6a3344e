"""The gradient-accuracy study of the PSA paper (Shekhovtsov, Yanush & Flach 2020), computed
with sbnkit's estimators.

A small SBN (default 2-5-5-5-1) on the 2-D toy set; ground truth is the exact gradient of
``mean_n E[softplus(-y_n η_n)]`` by enumeration; every method draws ``N`` single-sample estimates
of that gradient (one independent noise draw per data point each). The estimates of ``S`` samples
come from *one* forward/backward pass over the data repeated ``S`` times, split per sample by
hooks (:class:`PerSampleCapture`).

Metrics per parameter group (``layer0`` … ``layer{L-1}``; the last is the real output layer) and
number ``M`` of averaged samples, over ``⌊N/M⌋`` disjoint trials: relative RMSE
``sqrt(mean ||ĝ_M - g||² / ||g||²)`` and the cosine ``cos(ĝ_M, g)`` (mean, 15% and 85% quantiles),
with the gradients taken w.r.t. the weights of a parametrization (:data:`PARAMS`; by default the
authors' 0/1-state weights, in which the paper's figures are drawn).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import estimators
from ..data.toy import make_toy
from ..errors import UserError
from ..models import mlp
from ..network import SBN, Stage
from ..provenance import provenance
from ..runfolder import RunFolder, check_folder

LAYER_SIZES = (2, 5, 5, 5, 1)
M_GRID = tuple(m * 10**k for k in range(4) for m in range(1, 10))
SLOPE_MIN_TRIALS = 20
PART_SAMPLES = 2500

METHODS: dict[str, tuple[str, dict[str, object]]] = {
    "psa": ("psa", {"kernel": "reference"}),
    "st": ("st", {}),
    "hard_st": ("hard_st", {}),
    "arm": ("arm", {}),
    "reinforce": ("reinforce", {}),
    "concrete_tau_0.1": ("concrete", {"tau": 0.1}),
    "concrete_tau_1": ("concrete", {"tau": 1.0}),
    "mean": ("mean", {}),
}
PSA_ORDER_PREFIX = "psa_order_"
PARAMS = ("01", "pm1")  # 01: the authors' weights W01 = 2W, b01 = b - W·1 of layers reading units

TRAIN_DEFAULTS = {"lr": 0.03, "momentum": 0.9, "batch": 10, "n_per_class": 100, "data_seed": 1}
SAVED_EPOCHS = (1, 100, 2000)

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

Log = Callable[[str], None]


def toy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example logistic loss ``softplus(-y η)`` with ``y ∈ {-1, +1}``."""
    return F.softplus(-y * logits[:, 0])


class ExactLossMismatch(RuntimeError):
    """Our enumeration disagrees with the expected loss recorded in a network file."""


def resolve_method(name: str) -> tuple[str, dict[str, object]]:
    """``(registry name, options)`` of a study method; ``psa_order_N`` is series-kernel PSA."""
    if name in METHODS:
        return METHODS[name]
    if name.startswith(PSA_ORDER_PREFIX) and name[len(PSA_ORDER_PREFIX) :].isdigit():
        return "psa", {"kernel": "series", "order": int(name[len(PSA_ORDER_PREFIX) :])}
    known = ", ".join([*METHODS, PSA_ORDER_PREFIX + "N"])
    raise UserError(f"unknown gradeval method {name!r}; known methods: {known}")


def layers(model: SBN) -> list[nn.Linear]:
    """The parameter groups: each binary stage's Linear, then the head's Linear."""
    ok = all(isinstance(s, Stage) and s.norm is None for s in model.stages)
    if not ok or not all(type(op) is nn.Linear and op.bias is not None for op in model.ops[:-1]):
        raise UserError("gradeval needs a plain SBN MLP (sbnkit.models.mlp without norm)")
    return model.ops


def flat_grads(model: SBN) -> list[torch.Tensor]:
    """Each group's ``.grad`` as one vector ``[W.flatten(), b]``."""
    return [torch.cat([op.weight.grad.flatten(), op.bias.grad]) for op in layers(model)]


def check_param(param: str) -> None:
    """Raise :class:`UserError` unless ``param`` is one of :data:`PARAMS`."""
    if param not in PARAMS:
        raise UserError(f"unknown parametrization {param!r}; use one of {', '.join(PARAMS)}")


def grad_01(gw: torch.Tensor, gb: torch.Tensor) -> list[torch.Tensor]:
    """``[∂/∂W01, ∂/∂b01]`` from ``∂/∂W [..., out, in]`` and ``∂/∂b [..., out]`` of a layer
    reading ±1 units: with ``W = W01/2``, ``b = b01 + W01·1/2`` they are
    ``(∂/∂W + ∂/∂b 1ᵀ)/2`` and ``∂/∂b``."""
    return [0.5 * (gw + gb[..., None]), gb]


def reparam_grads(grads: Sequence[torch.Tensor], model: SBN, param: str) -> list[torch.Tensor]:
    """Per-group gradients ``[..., P_k]`` (``[W.flatten(), b]`` of the ±1 model) w.r.t. the
    weights of parametrization ``param``; the first layer reads the real input and is kept."""
    if param == "pm1":
        return list(grads)
    out = [grads[0]]
    for v, op in zip(grads[1:], layers(model)[1:], strict=True):
        n = op.weight.numel()
        gw, gb = grad_01(v[..., :n].unflatten(-1, op.weight.shape), v[..., n:])
        out.append(torch.cat([gw.flatten(-2), gb], dim=-1))
    return out


# --------------------------------------------------------------------------- networks


@torch.no_grad()
def ap2_init_(model: SBN, X: torch.Tensor) -> None:
    """AP2-init (the moment-propagation init of the PSA authors' public code) in the ±1
    encoding: standardise each binary layer's pre-activation with moments propagated from the data's
    per-feature mean and variance.

    ``μ = W m + b``, ``v = W² s + 1e-10``; ``W ← W/√v``, ``b ← (b - μ)/√v``. The units are then
    ``±1`` with probability 1/2 each, so the next layer sees ``m = 0``, ``s = 1``. The output
    layer is left as it is.
    """
    m, s = X.mean(0), X.var(0, unbiased=False)
    for op in layers(model)[:-1]:
        mu = op.weight @ m + op.bias
        sd = torch.sqrt(op.weight.pow(2) @ s + 1e-10)
        op.weight.div_(sd[:, None])
        op.bias.sub_(mu).div_(sd)
        m, s = torch.zeros_like(mu), torch.ones_like(mu)


def init_network(X: torch.Tensor, seed: int, sizes: Sequence[int] = LAYER_SIZES) -> SBN:
    """A float64 SBN MLP with ``W, b ~ U(-1, 1)`` (seeded), then :func:`ap2_init_` on ``X``."""
    gen = torch.Generator().manual_seed(int(seed))
    model = mlp((sizes[0],), sizes[-1], hidden=tuple(sizes[1:-1])).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(2 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 1)
    ap2_init_(model, X)
    return model


def network_to_json(model: SBN, X: torch.Tensor, y: torch.Tensor, **extra: object) -> dict:
    """The authors' file format: ``layers[k].weight`` ``[out, in]``, ``.bias`` ``[1, out]``,
    ``X``, ``y``, plus ``extra`` fields."""
    return {
        "layers": [
            {"weight": op.weight.tolist(), "bias": [op.bias.tolist()]} for op in layers(model)
        ],
        "X": X.tolist(),
        "y": y.tolist(),
        **extra,
    }


def network_from_json(data: dict, source: str) -> tuple[SBN, torch.Tensor, torch.Tensor]:
    """``(model, X, y)`` from :func:`network_to_json`'s format, float64; checks the shapes."""
    try:
        ws = [torch.tensor(layer["weight"], dtype=torch.float64) for layer in data["layers"]]
        bs = [
            torch.tensor(layer["bias"], dtype=torch.float64).flatten() for layer in data["layers"]
        ]
        X = torch.tensor(data["X"], dtype=torch.float64)
        y = torch.tensor(data["y"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UserError(
            f"{source}: not a gradeval network file ({exc!r}); it needs "
            "layers[k].weight, layers[k].bias, X and y"
        ) from None
    sizes = [ws[0].shape[-1], *(w.shape[0] for w in ws)] if ws and ws[0].dim() == 2 else []
    shapes_ok = (
        len(ws) >= 2
        and all(w.dim() == 2 for w in ws)
        and all(w.shape[1] == n for w, n in zip(ws, sizes[:-1], strict=True))
        and all(b.shape == (w.shape[0],) for w, b in zip(ws, bs, strict=True))
        and sizes[-1] == 1
        and X.dim() == 2
        and X.shape[1] == sizes[0]
        and y.shape == (X.shape[0],)
        and bool(((y == 1) | (y == -1)).all())
    )
    if not shapes_ok:
        raise UserError(f"{source}: inconsistent layer shapes, X or y (y must be ±1, one output)")
    model = mlp((sizes[0],), sizes[-1], hidden=tuple(sizes[1:-1])).double()
    with torch.no_grad():
        for op, w, b in zip(layers(model), ws, bs, strict=True):
            op.weight.copy_(w)
            op.bias.copy_(b)
    return model, X, y


def load_network(path: str | Path) -> tuple[SBN, torch.Tensor, torch.Tensor, dict]:
    """``(model, X, y, data)`` from a network JSON file (see :func:`network_from_json`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"network file {str(path)!r} not found; pass a gradeval network JSON")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read network file {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a gradeval network file (expected a JSON object)")
    return (*network_from_json(data, str(path)), data)


# --------------------------------------------------------------------------- training


def train_reinforce(
    model: SBN,
    X: torch.Tensor,
    y: torch.Tensor,
    checkpoints: Sequence[int],
    seed: int,
    lr: float = 0.03,
    momentum: float = 0.9,
    batch: int = 10,
    param: str = "01",
) -> dict[int, dict[str, torch.Tensor]]:
    """Train with REINFORCE (no baseline, as the PSA paper's studied network): SGD with
    momentum, reshuffled batches.

    SGD runs on the weights of parametrization ``param`` (see :data:`PARAMS`; with ``"01"`` the
    same lr moves the ±1 weights about 4x less than with ``"pm1"``). Returns the state dicts
    after each epoch in ``checkpoints``. The SGD step uses ``_foreach`` ops
    (``buf ← μ·buf + g``, ``p ← p - lr·buf``, as ``torch.optim.SGD``) to keep the overhead of
    40000 tiny steps low.
    """
    check_param(param)
    est = estimators.get("reinforce")
    ops = layers(model)
    binary = [k > 0 and param == "01" for k in range(len(ops))]
    with torch.no_grad():
        master = []
        for op, b01 in zip(ops, binary, strict=True):
            w, b = op.weight.detach(), op.bias.detach()
            master += [2 * w, b - w.sum(1)] if b01 else [w.clone(), b.clone()]
    bufs = [torch.zeros_like(p) for p in master]
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    saved: dict[int, dict[str, torch.Tensor]] = {}
    for epoch in range(1, max(checkpoints) + 1):
        for idx in torch.randperm(X.shape[0], generator=gen).split(batch):
            model.zero_grad(set_to_none=True)
            est.loss(model, X[idx], y[idx], toy_loss).backward()
            with torch.no_grad():
                grads = []
                for op, b01 in zip(ops, binary, strict=True):
                    gw, gb = op.weight.grad, op.bias.grad
                    grads += grad_01(gw, gb) if b01 else [gw, gb]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                torch._foreach_add_(master, bufs, alpha=-lr)
                for k, (op, b01) in enumerate(zip(ops, binary, strict=True)):
                    w, b = master[2 * k], master[2 * k + 1]
                    op.weight.copy_(0.5 * w if b01 else w)
                    op.bias.copy_(b + 0.5 * w.sum(1) if b01 else b)
        if epoch in checkpoints:
            saved[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return saved


# --------------------------------------------------------------------------- gradients


def exact_gradient(
    model: SBN, X: torch.Tensor, y: torch.Tensor
) -> tuple[float, list[torch.Tensor]]:
    """``(exact mean expected loss, exact gradient per group)`` by enumeration."""
    model.zero_grad(set_to_none=True)
    loss = estimators.get("exact").loss(model, X, y, toy_loss)
    loss.backward()
    grads = [g.clone() for g in flat_grads(model)]
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


class PerSampleCapture:
    """Per-sample gradients of one estimator pass over data repeated ``S`` times.

    Row ``s·n + i`` of the pass is point ``i`` of sample ``s``. Use :meth:`targets` as the
    pass's ``y`` and :meth:`loss_fn` as its loss, inside ``with capture:``; after ``backward``,
    :meth:`per_sample` gives each sample's gradient of its own ``n``-point mean.

    * Binary stages: a forward hook records each grad-tracked call's input ``x`` and a tensor
      hook its ``δ = ∂L/∂a``; a call may have ``k·S·n`` rows (``k`` stacked copies of the batch)
      or shape ``[S·n, ..., in]``. The sample's gradient is ``Σ δ xᵀ``, ``Σ δ`` over its rows.
    * The head: estimators may use its weight outside ``head(x)`` (PSA forms the flipped logits
      from it directly), but only to make the logits ``η`` they pass to ``loss_fn``. So
      :meth:`loss_fn` records, per loss row ``r``, its sample (encoded in the targets),
      ``∂ℓ_r/∂θ_head = Σ_k ∂ℓ_r/∂η_rk · ∂η_rk/∂θ_head`` (the last factor by double backward:
      ``∂/∂t`` of ``∂(tᵀη)/∂θ``, batched over ``θ``'s entries) and ``∂L/∂ℓ_r`` (a tensor hook).
    """

    def __init__(self, model: SBN, n_samples: int, n_points: int) -> None:
        mods = layers(model)
        self.stages, self.head = mods[:-1], mods[-1]
        self.n_samples, self.n_points = n_samples, n_points
        self.calls: list[list[list[torch.Tensor | None]]] = [[] for _ in self.stages]
        self.rows: list[list[torch.Tensor | None]] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> PerSampleCapture:
        for k, module in enumerate(self.stages):
            self.handles.append(module.register_forward_hook(self._hook(k)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, k: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if output.requires_grad:
                self.calls[k].append(_keep_grad(output, inputs[0].detach()))

        return hook

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (±1) repeated ``S`` times, scaled by ``1 + sample index`` to tag each row."""
        tag = torch.arange(1, self.n_samples + 1, dtype=y.dtype).repeat_interleave(y.shape[0])
        return y.repeat(self.n_samples) * tag

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:func:`toy_loss` on tagged targets, recording the head's per-row gradients."""
        loss = toy_loss(logits, torch.sign(y))
        if loss.requires_grad and logits.requires_grad:
            params = [self.head.weight, self.head.bias]
            t = torch.zeros_like(logits, requires_grad=True)
            grads = torch.autograd.grad(
                logits,
                params,
                grad_outputs=t,
                create_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
            flat = torch.cat([g.flatten() for g in grads])
            if flat.requires_grad:
                eye = torch.eye(flat.numel(), dtype=flat.dtype)
                (deta,) = torch.autograd.grad(flat, t, grad_outputs=eye, is_grads_batched=True)
                (dloss,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
                jac = torch.einsum("prk,rk->rp", deta, dloss)
                group = (y.abs().round() - 1).long()
                self.rows.append(_keep_grad(loss, jac, group))
        return loss

    def per_sample(self) -> list[torch.Tensor]:
        """Per group, ``[S, out·in + out]``: each sample's gradient of its ``n``-point mean
        (the pass's loss is the mean over ``S·n`` rows, hence the factor ``S``)."""
        s, n = self.n_samples, self.n_points
        out = []
        for module, calls in zip(self.stages, self.calls, strict=True):
            gw = module.weight.new_zeros(s, *module.weight.shape)
            gb = module.weight.new_zeros(s, module.out_features)
            for d, x in calls:
                if d is None:
                    continue
                if x.dim() > 2 and x.shape[0] == s * n:
                    x = x.reshape(s, n, -1, x.shape[-1]).permute(2, 0, 1, 3)
                    d = d.reshape(s, n, -1, d.shape[-1]).permute(2, 0, 1, 3)
                elif x.dim() == 2 and x.shape[0] % (s * n) == 0:
                    x = x.reshape(-1, s, n, x.shape[-1])
                    d = d.reshape(-1, s, n, d.shape[-1])
                else:
                    raise RuntimeError(
                        f"cannot split a Linear call of input shape "
                        f"{list(x.shape)} into {s} samples of {n} rows"
                    )
                gw += torch.einsum("ksno,ksni->soi", d, x)
                gb += d.sum(dim=(0, 2))
            out.append(torch.cat([gw.flatten(1), gb], dim=1))
        size = self.head.weight.numel() + self.head.bias.numel()
        head = self.head.weight.new_zeros(s, size)
        for d, jac, group in self.rows:
            if d is not None:
                head.index_add_(0, group, d[:, None] * jac)
        out.append(head)
        return [s * g for g in out]


def _keep_grad(t: torch.Tensor, *extra: torch.Tensor) -> list[torch.Tensor | None]:
    """``[None, *extra]``, whose first entry becomes ``∂L/∂t`` once the backward reaches ``t``."""
    record: list[torch.Tensor | None] = [None, *extra]

    def keep(grad: torch.Tensor) -> None:
        record[0] = grad

    t.register_hook(keep)
    return record


def sample_gradients(
    model: SBN,
    estimator: estimators.Estimator,
    X: torch.Tensor,
    y: torch.Tensor,
    n_samples: int,
    chunk_rows: int = 200_000,
) -> tuple[list[torch.Tensor], float]:
    """``n_samples`` single-sample gradient estimates per group, ``[N, P_k]`` each, and the mean
    of the estimator's loss values.

    Chunks of ``S = chunk_rows // n`` samples go through one pass each (:class:`PerSampleCapture`);
    per chunk the mean of the per-sample gradients must equal the pass's ``.grad`` (so no gradient
    path is missed).
    """
    n = X.shape[0]
    per_chunk = max(1, chunk_rows // n)
    parts: list[list[torch.Tensor]] = [[] for _ in layers(model)]
    loss_sum = 0.0
    done = 0
    while done < n_samples:
        s = min(per_chunk, n_samples - done)
        model.zero_grad(set_to_none=True)
        with PerSampleCapture(model, s, n) as cap:
            loss = estimator.loss(model, X.repeat(s, 1), cap.targets(y), cap.loss_fn)
            loss.backward()
        grads = cap.per_sample()
        for k, (g, full) in enumerate(zip(grads, flat_grads(model), strict=True)):
            scale = float(full.abs().max()) + float(g.abs().max()) / s
            if not torch.allclose(g.mean(0), full, rtol=1e-7, atol=1e-10 * scale):
                raise RuntimeError(
                    f"{estimator!r}: per-sample gradients of layer{k} do not add up to the "
                    "pass's gradient; the estimator reaches W, b other than through W x + b"
                )
            parts[k].append(g)
        loss_sum += loss.item() * s
        done += s
    model.zero_grad(set_to_none=True)
    return [torch.cat(p) for p in parts], loss_sum / n_samples


# --------------------------------------------------------------------------- metrics


def m_grid(n_samples: int) -> list[int]:
    """The numbers of averaged samples ``M`` of the study that allow at least one trial."""
    return [m for m in M_GRID if m <= n_samples]


def gradient_metrics(est: torch.Tensor, g: torch.Tensor, ms: Sequence[int]) -> dict[str, list]:
    """Relative RMSE, its relative standard error and the cosine statistics per ``M``.

    ``est`` is ``[N, P]`` single-sample estimates of ``g`` ``[P]``; trial ``t`` of ``M`` averages
    rows ``tM .. tM + M - 1``. ``rmse_se`` is the delta-method standard error of
    ``log rmse`` (``None`` for a single trial or a zero error).
    """
    g2 = float(g.dot(g))
    if g2 == 0.0:
        raise UserError("the exact gradient of a layer is zero; relative errors are undefined")
    gnorm = math.sqrt(g2)
    res: dict[str, list] = {
        k: [] for k in ("M", "trials", "rmse", "rmse_se", "cos_mean", "cos_q15", "cos_q85")
    }
    levels = torch.tensor([0.15, 0.85], dtype=est.dtype)
    for m in ms:
        t = est.shape[0] // m
        means = est[: t * m].reshape(t, m, -1).mean(1)
        err = (means - g).pow(2).sum(1) / g2
        mse = float(err.mean())
        cos = means @ g / (means.norm(dim=1).clamp_min(1e-300) * gnorm)
        q15, q85 = torch.quantile(cos, levels).tolist()
        res["M"].append(m)
        res["trials"].append(t)
        res["rmse"].append(math.sqrt(mse))
        res["rmse_se"].append(
            0.5 * float(err.std()) / (mse * math.sqrt(t)) if t > 1 and mse > 0 else None
        )
        res["cos_mean"].append(float(cos.mean()))
        res["cos_q15"].append(q15)
        res["cos_q85"].append(q85)
    return res


def relative_bias(est: torch.Tensor, g: torch.Tensor) -> float:
    """``||E ĝ - g|| / ||g||`` estimated from all samples, with the variance part removed:
    ``||mean - g||² - tr(Cov)/N`` (clamped at 0)."""
    n = est.shape[0]
    sq = float((est.mean(0) - g).pow(2).sum())
    var = float(est.var(0).sum()) / n if n > 1 else 0.0
    return math.sqrt(max(sq - var, 0.0) / float(g.dot(g)))


def loglog_slope(metrics: dict[str, list], min_trials: int = SLOPE_MIN_TRIALS) -> dict:
    """The slope of ``log rmse`` from ``M = 1`` to the largest ``M`` with ``min_trials`` trials,
    with a conservative standard error ``sqrt(se_1² + se_M²) / log M`` (the two RMSEs share
    samples, which only correlates them positively). ``None`` entries where undefined."""
    ok = [i for i, t in enumerate(metrics["trials"]) if t >= min_trials and metrics["M"][i] > 1]
    if not ok or metrics["rmse"][0] == 0.0 or metrics["rmse"][ok[-1]] == 0.0:
        return {"M": None, "slope": None, "se": None}
    i = ok[-1]
    m, se1, sem = metrics["M"][i], metrics["rmse_se"][0], metrics["rmse_se"][i]
    slope = math.log(metrics["rmse"][i] / metrics["rmse"][0]) / math.log(m)
    se = None if se1 is None or sem is None else math.hypot(se1, sem) / math.log(m)
    return {"M": m, "slope": slope, "se": se}


# --------------------------------------------------------------------------- the study


def method_seed(seed: int, name: str, part: int) -> int:
    """The seed of part ``part`` of a method's samples; independent of the other methods."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{name}/{part}".encode())) % 2**63


def _sample_task(task: tuple) -> tuple[list[torch.Tensor], float, float, float]:
    """``(per-group estimates, mean loss value, wall seconds, CPU seconds)`` of one part of one
    method's samples (run in a worker process or in-process)."""
    model, X, y, name, n_samples, seed, chunk_rows = task
    reg, opts = resolve_method(name)
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    grads, value = sample_gradients(model, estimators.get(reg, **opts), X, y, n_samples, chunk_rows)
    return grads, value, time.perf_counter() - t0, time.process_time() - c0


def study_network(
    model: SBN,
    X: torch.Tensor,
    y: torch.Tensor,
    methods: Sequence[str],
    n_samples: int,
    seed: int,
    chunk_rows: int = 200_000,
    pool: Executor | None = None,
    param: str = "01",
    log: Log = print,
) -> dict:
    """Exact gradient and every method's metrics on one network (a JSON-ready dict), with the
    gradients taken w.r.t. the weights of parametrization ``param`` (:func:`reparam_grads`).

    Each method's samples are drawn in parts of at most :data:`PART_SAMPLES`, each with its own
    seed, so the results do not depend on ``pool`` (a process pool running the parts in
    parallel, or ``None`` to run them here).
    """
    t0 = time.perf_counter()
    loss, exact = exact_gradient(model, X, y)
    exact = reparam_grads(exact, model, param)
    t_exact = time.perf_counter() - t0
    names = [f"layer{k}" for k in range(len(exact))]
    ms = m_grid(n_samples)
    res: dict = {
        "exact_expected_loss": loss,
        "exact_grad_norm": {nm: float(g.norm()) for nm, g in zip(names, exact, strict=True)},
        "time_exact_s": t_exact,
        "methods": {},
    }
    sizes = [min(PART_SAMPLES, n_samples - i) for i in range(0, n_samples, PART_SAMPLES)]
    tasks = [
        (model, X, y, name, n, method_seed(seed, name, part), chunk_rows)
        for name in methods
        for part, n in enumerate(sizes)
    ]
    outs = iter(pool.map(_sample_task, tasks) if pool is not None else map(_sample_task, tasks))
    for name in methods:
        parts = [next(outs) for _ in sizes]
        grads = [torch.cat(gs) for gs in zip(*(p[0] for p in parts), strict=True)]
        grads = reparam_grads(grads, model, param)
        reg, opts = resolve_method(name)
        entry: dict = {
            "estimator": reg,
            "options": opts,
            "loss_value_mean": sum(p[1] * n for p, n in zip(parts, sizes, strict=True)) / n_samples,
            "time_sampling_s": sum(p[2] for p in parts),
            "cpu_sampling_s": sum(p[3] for p in parts),
            "layers": {},
        }
        for nm, est, g in zip(names, grads, exact, strict=True):
            met = gradient_metrics(est, g, ms)
            met["relative_bias"] = relative_bias(est, g)
            met["slope"] = loglog_slope(met)
            entry["layers"][nm] = met
        res["methods"][name] = entry
        log(
            f"  {name:<18} {entry['time_sampling_s']:6.1f} s ({entry['cpu_sampling_s']:.1f} s CPU)"
            "  RMSE@M=1 " + " ".join(f"{entry['layers'][nm]['rmse'][0]:.3g}" for nm in names)
        )
    return res


def findings(res: dict) -> dict:
    """The paper's qualitative findings, checked on one network's results.

    * ``psa_lowest_at_m1``: PSA has the lowest RMSE at ``M = 1`` in every hidden layer (among
      the methods other than its ``psa_order_N`` variants);
    * ``psa_last_hidden_sqrt``: PSA's last-hidden-layer slope is ``-1/2`` within 3 standard
      errors (:func:`loglog_slope`);
    * ``st_floor``: in every hidden layer ST's RMSE at the slope's largest ``M`` is more than twice
      the pure-variance value ``rmse_1 / √M`` (it flattens at a bias floor);
    * ``unbiased_need_more``: ARM and REINFORCE need ``M >= 10`` samples (or more than the grid
      has) to reach PSA's ``M = 1`` RMSE in every hidden layer.
    """
    meth = res["methods"]
    hidden = list(next(iter(meth.values()))["layers"])[:-1]
    out: dict = {}
    rivals = [k for k in meth if not k.startswith(PSA_ORDER_PREFIX)]
    if "psa" in meth and len(rivals) > 1:
        lowest = {
            nm: min(rivals, key=lambda k, nm=nm: meth[k]["layers"][nm]["rmse"][0]) for nm in hidden
        }
        out["psa_lowest_at_m1"] = {
            "holds": all(v == "psa" for v in lowest.values()),
            "lowest": lowest,
        }
    if "psa" in meth:
        sl = meth["psa"]["layers"][hidden[-1]]["slope"]
        holds = sl["se"] is not None and abs(sl["slope"] + 0.5) <= 3 * sl["se"]
        out["psa_last_hidden_sqrt"] = {"holds": holds, **sl}
    if "st" in meth:
        ratios = {}
        for nm in hidden:
            lay = meth["st"]["layers"][nm]
            m = lay["slope"]["M"]
            ratios[nm] = (
                None
                if m is None
                else lay["rmse"][lay["M"].index(m)] * math.sqrt(m) / lay["rmse"][0]
            )
        out["st_floor"] = {
            "holds": all(r is not None and r > 2 for r in ratios.values()),
            "excess_over_variance": ratios,
            "relative_bias": {nm: meth["st"]["layers"][nm]["relative_bias"] for nm in hidden},
        }
    if "psa" in meth and any(k in meth for k in ("arm", "reinforce")):
        need: dict = {}
        for k in ("arm", "reinforce"):
            if k not in meth:
                continue
            need[k] = {}
            for nm in hidden:
                target = meth["psa"]["layers"][nm]["rmse"][0]
                lay = meth[k]["layers"][nm]
                hit = [m for m, r in zip(lay["M"], lay["rmse"], strict=True) if r <= target]
                need[k][nm] = hit[0] if hit else None
        out["unbiased_need_more"] = {
            "holds": all(v is None or v >= 10 for d in need.values() for v in d.values()),
            "samples_to_match_psa_m1": need,
        }
    return out


def compare_with_paper(res: dict, paper: dict[str, list[float]]) -> dict:
    """Our ``M = 1`` RMSE over the paper's, per method and binary layer; ``agrees`` when every
    ratio lies within ``[1/1.5, 1.5]`` (the paper's values are read by eye, ±20%)."""
    out: dict = {}
    for name, vals in paper.items():
        if name not in res["methods"]:
            continue
        lays = res["methods"][name]["layers"]
        ratios = [lays[f"layer{k}"]["rmse"][0] / v for k, v in enumerate(vals)]
        out[name] = {
            "paper": vals,
            "ours": [lays[f"layer{k}"]["rmse"][0] for k in range(len(vals))],
            "ratio": ratios,
            "agrees": all(
                1 / PAPER_AGREEMENT_FACTOR <= r <= PAPER_AGREEMENT_FACTOR for r in ratios
            ),
        }
    return out


def check_exact_loss(res: dict, expected: float, source: str, tol: float = 1e-9) -> None:
    """Raise :class:`ExactLossMismatch` if our exact loss differs from ``expected`` by > tol."""
    got = res["exact_expected_loss"]
    if not abs(got - expected) <= tol:
        raise ExactLossMismatch(
            f"exact expected loss {got!r} of {source} differs from the recorded {expected!r} "
            f"by {abs(got - expected):.3g} > {tol:g}; the enumeration or the file is wrong"
        )


def summary_table(results: dict) -> str:
    """A plain-text table: method × layer relative RMSE at ``M = 1`` per network (paper in [])."""
    lines = []
    for net, res in results["networks"].items():
        paper = res.get("paper_rmse_m1", {})
        meth = res["methods"]
        names = list(next(iter(meth.values()))["layers"])
        lines.append(
            f"{net}: relative RMSE at M=1 (exact loss {res['exact_expected_loss']:.10g}"
            + (f"; paper values in [], {PAPER_PROVENANCE})" if paper else ")")
        )
        lines.append(f"  {'method':<18}" + "".join(f"{nm:>18}" for nm in names))
        for name, entry in meth.items():
            cells = []
            for k, nm in enumerate(names):
                cell = f"{entry['layers'][nm]['rmse'][0]:.3g}"
                if name in paper and k < len(paper[name]):
                    cell += f" [{paper[name][k]:.3g}]"
                cells.append(f"{cell:>18}")
            lines.append(f"  {name:<18}" + "".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- orchestration


def train_config(seed: int, param: str = "01") -> dict:
    """The REINFORCE training recipe of the PSA paper's gradient-accuracy experiment with this
    init/training seed and SGD parametrization (see :func:`train_reinforce`)."""
    return {
        "method": "reinforce",
        "sizes": list(LAYER_SIZES),
        "init": "U(-1,1)+AP2",
        "seed": int(seed),
        "param": param,
        "dtype": "float64",
        **TRAIN_DEFAULTS,
    }


def _cached_training(cache_dir: Path | None, cfg: dict, epochs: Sequence[int]) -> tuple[dict, dict]:
    """``(networks by epoch, record)`` from ``cache_dir`` if it matches ``cfg`` and holds every
    epoch; empty dicts otherwise."""
    if cache_dir is None:
        return {}, {}
    try:
        record = json.loads((cache_dir / "training.json").read_text())
        if record["config"] != cfg or not set(epochs) <= set(record["epochs"]):
            return {}, {}
        nets = {e: json.loads((cache_dir / f"chk-{e}.json").read_text()) for e in record["epochs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}, {}
    return nets, record


def trained_networks(
    cache_dir: Path | None, epochs: Sequence[int], seed: int, param: str = "01", log: Log = print
) -> tuple[dict[int, dict], dict]:
    """Network dicts (:func:`network_to_json` format) by epoch, and the training record.

    Reuses ``cache_dir/training.json`` and ``chk-<epoch>.json`` (an earlier study's output) when
    the recipe matches and every requested epoch is there; otherwise trains to ``max(epochs)``,
    keeping the requested epochs and 1, 100, 2000 on the way.
    """
    cfg = train_config(seed, param)
    nets, record = _cached_training(cache_dir, cfg, epochs)
    if nets:
        log(
            f"reusing the REINFORCE checkpoints {sorted(nets)} in {cache_dir} "
            f"(trained in {record['time_train_s']:.1f} s)"
        )
        return nets, {**record, "reused": True}
    X, y = make_toy(cfg["n_per_class"], cfg["data_seed"])
    model = init_network(X, seed)
    last = max(epochs)
    keep = sorted({*epochs, *(e for e in SAVED_EPOCHS if e <= last)})
    log(f"training with REINFORCE for {last} epochs ({last * X.shape[0] // cfg['batch']} steps)")
    t0 = time.perf_counter()
    states = train_reinforce(
        model, X, y, keep, seed, cfg["lr"], cfg["momentum"], cfg["batch"], param
    )
    t_train = time.perf_counter() - t0
    log(f"training took {t_train:.1f} s")
    nets = {}
    for e, state in states.items():
        model.load_state_dict(state)
        nets[e] = network_to_json(model, X, y, epoch=e, training=cfg)
    return nets, {"config": cfg, "epochs": keep, "time_train_s": t_train, "reused": False}


def _study_one(
    label: str,
    model: SBN,
    X: torch.Tensor,
    y: torch.Tensor,
    data: dict,
    methods: Sequence[str],
    samples: int,
    seed: int,
    chunk_rows: int,
    pool: Executor | None,
    param: str,
    log: Log,
) -> dict:
    """:func:`study_network` plus the exact-loss check, the paper comparison and findings."""
    log(f"{label}: {len(methods)} methods × {samples} samples")
    t0 = time.perf_counter()
    res = study_network(model, X, y, methods, samples, seed, chunk_rows, pool, param, log)
    if "exact_expected_loss" in data:
        check_exact_loss(res, float(data["exact_expected_loss"]), label)
    paper = data.get("paper_relative_rmse_at_one_sample")
    if paper is None and data.get("epoch") in PAPER_RMSE_M1:
        paper = PAPER_RMSE_M1[data["epoch"]]
        res["paper_note"] = (
            "the paper's values are for the authors' network at the same epoch, "
            "not this one: compare qualitatively"
        )
    if paper is not None:
        res["paper_rmse_m1"] = {k: v for k, v in paper.items() if isinstance(v, list)}
        res["paper_provenance"] = PAPER_PROVENANCE
        res["paper_comparison"] = compare_with_paper(res, res["paper_rmse_m1"])
    res["findings"] = findings(res)
    res["time_study_s"] = time.perf_counter() - t0
    return res


def run(
    out_dir: str | Path,
    network: str | Path | None = None,
    train_checkpoints: Sequence[int] = (100, 2000),
    samples: int = 20000,
    methods: Sequence[str] = tuple(METHODS),
    seed: int = 1,
    param: str = "01",
    workers: int = 2,
    chunk_rows: int = 200_000,
    log: Log = print,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> dict:
    """Run the study on ``network`` (a JSON file) or on REINFORCE-trained checkpoints, and write
    ``gradeval.json``, the PNG plots and the checkpoints into the run folder ``out_dir``
    (:class:`~sbnkit.runfolder.RunFolder`: checked before any compute; an earlier study there is
    replaced only with ``overwrite``, and its REINFORCE checkpoints are reused when the recipe
    matches). ``argv`` is the command line recorded in the run's provenance.

    ``param`` (:data:`PARAMS`) is the parametrization both of the training's SGD and of the
    gradients whose errors are measured; the relative errors of layers reading binary units
    depend on it, and the paper's are those of ``"01"``. The samples are drawn by ``workers``
    processes with one torch thread each (``1``: in this process, also with one thread).
    Returns the results dict. Raises :class:`~sbnkit.errors.UserError` for bad arguments, an
    unusable output folder or a bad network file.
    """
    from .plots import plot_network  # not at module level: worker processes need no matplotlib

    if not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples must be a positive integer, got {samples!r}")
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    check_param(param)
    if not methods:
        raise UserError("no methods given; pass at least one gradeval method")
    for name in methods:
        resolve_method(name)
    epochs = sorted({int(e) for e in train_checkpoints})
    if network is None and (not epochs or epochs[0] < 1):
        raise UserError(f"training checkpoints must be positive epochs, got {epochs}")
    check_folder(out_dir, "gradeval", overwrite=overwrite)
    loaded = load_network(network) if network is not None else None
    files = [] if network is None else [network]
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = None
    with ExitStack() as stack:
        rf = stack.enter_context(
            RunFolder(
                out_dir,
                "gradeval",
                overwrite=overwrite,
                provenance=provenance(argv, files),
                report=log,
            )
        )
        stack.callback(torch.set_num_threads, saved_threads)
        training = None
        if loaded is not None:
            nets = {Path(network).stem: loaded}
        else:
            saved, training = trained_networks(rf.previous, epochs, seed, param, log)
            nets = {
                f"chk-{e}": (*network_from_json(saved[e], f"chk-{e}"), saved[e]) for e in epochs
            }
        results: dict = {
            "config": {
                "samples": samples,
                "methods": list(methods),
                "seed": seed,
                "M_grid": m_grid(samples),
                "network": None if network is None else str(network),
                "param": param,
                "workers": workers,
                "torch": torch.__version__,
            },
            "training": training,
            "networks": {},
        }
        t0 = time.perf_counter()
        if workers > 1:
            pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
            stack.callback(pool.shutdown, cancel_futures=True)
        for label, (model, X, y, data) in nets.items():
            res = _study_one(
                label, model, X, y, data, methods, samples, seed, chunk_rows, pool, param, log
            )
            data.setdefault("exact_expected_loss", res["exact_expected_loss"])
            results["networks"][label] = res
        results["timings"] = {
            "study_s": time.perf_counter() - t0,
            "training_s": None
            if training is None or training["reused"]
            else training["time_train_s"],
        }
        if training is not None:
            for e, net in saved.items():
                rf.write_text(f"chk-{e}.json", json.dumps(net))
            record = {k: v for k, v in training.items() if k != "reused"}
            rf.write_text("training.json", json.dumps(record, indent=1))
        rf.write_text("gradeval.json", json.dumps(results, indent=1))
        for label, res in results["networks"].items():
            plot_network(res, rf, label)
    return results
