"""Per-sample gradients of an estimator from one batched pass.

To draw ``S`` independent single-sample estimates of ``∇ mean_i E[loss_i]`` over ``n`` points at
the cost of one pass, the points are repeated ``S`` times (row ``s·n + i`` is point ``i`` of sample
``s``) and each sample's gradient of its own ``n``-point mean is recovered from the one backward:

* **Stage ops** (``nn.Linear`` or ``nn.Conv2d``): a forward hook records each grad-tracked call's
  input ``x`` and a tensor hook its ``δ = ∂L/∂(op output)``; a call may hold ``k·S·n`` rows (``k``
  stacked copies of the batch) or, for a Linear, shape ``[S·n, ..., in]``. The sample's gradient
  is ``Σ δ xᵀ`` (a conv: over the unfolded patches) and ``Σ δ`` over its rows.
* **The head**: estimators may use its weight outside ``head(x)`` (PSA forms the flipped logits
  from it), but the logits ``η`` they pass to ``loss_fn`` are always affine in the head's Linear:
  ``η_rk = Σ_j W_kj f_rj + b_k c_r``. The capture's :meth:`PerSampleCapture.loss_fn` reads each loss
  row's sample from its target, takes ``(f_r, c_r) = ∂η_r0/∂(W_0, b_0)`` by a batched double
  backward, ``∂ℓ_r/∂η_r`` and ``∂L/∂ℓ_r`` (a tensor hook); the row's head gradient is
  ``∂L/∂ℓ_r · ∂ℓ_r/∂η_r ⊗ (f_r, c_r)``.

:func:`sample_gradients` checks on every pass that the per-sample gradients add up to the pass's
``.grad``, so a gradient path that bypasses the hooks (an estimator computing with the weights
directly, e.g. moment propagation) raises instead of going unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import UserError
from .estimators import Estimator
from .estimators.base import LossFn, cross_entropy
from .network import SBN, Stage

__all__ = [
    "MissedGradient",
    "PerSampleCapture",
    "flat_grads",
    "measured_ops",
    "sample_gradients",
]

Op = nn.Linear | nn.Conv2d


class MissedGradient(RuntimeError):
    """The per-sample gradients of a pass do not add up to its ``.grad``: the estimator reaches a
    parameter other than through the op calls and logits the capture sees."""


def measured_ops(model: nn.Module) -> list[Op]:
    """The parameter groups of ``model``: each :class:`Stage`'s op, then the head's Linear.

    Raises :class:`UserError` unless ``model`` is an :class:`SBN` of stages and ``nn.Flatten``
    modules whose ops have real (not parametrized) weights, convolutions being plain
    (``groups=1``, zero padding).
    """
    if not isinstance(model, SBN):
        raise UserError(
            f"per-sample gradients need an sbnkit SBN (sbnkit.models.mlp, convnet, cifar_s1), "
            f"got {type(model).__name__}"
        )
    for k, m in enumerate(model.stages):
        if not isinstance(m, (Stage, nn.Flatten)):
            raise UserError(
                f"model.stages[{k}] is {type(m).__name__}; per-sample gradients walk Stage and "
                "nn.Flatten modules only"
            )
    ops = model.ops
    for op in ops:
        if parametrize.is_parametrized(op, "weight"):
            raise UserError(
                f"{op} has a binary-weight parametrization; per-sample gradients are taken "
                "w.r.t. real weights (remove the parametrization first)"
            )
        if isinstance(op, nn.Conv2d) and (op.groups != 1 or op.padding_mode != "zeros"):
            raise UserError(f"{op}: per-sample gradients need groups=1 and zero padding")
        if isinstance(op, nn.Conv2d) and isinstance(op.padding, str):
            raise UserError(f"{op}: per-sample gradients need a numeric padding")
    return ops


def flat_grads(model: nn.Module) -> list[torch.Tensor]:
    """Each group's ``.grad`` as one vector ``[W.flatten(), b]`` (zeros where there is none)."""
    out = []
    for op in measured_ops(model):
        parts = [op.weight] if op.bias is None else [op.weight, op.bias]
        out.append(
            torch.cat(
                [(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in parts]
            )
        )
    return out


def _keep_grad(t: torch.Tensor, *extra: torch.Tensor) -> list[torch.Tensor | None]:
    """``[None, *extra]``, whose first entry becomes ``∂L/∂t`` once the backward reaches ``t``."""
    record: list[torch.Tensor | None] = [None, *extra]

    def keep(grad: torch.Tensor) -> None:
        record[0] = grad

    t.register_hook(keep)
    return record


def _conv_per_sample(
    op: nn.Conv2d, x: torch.Tensor, d: torch.Tensor, s: int, n: int
) -> torch.Tensor:
    """``[s, out, in·kh·kw]``: per sample, the weight gradient ``Σ δ ⋆ x`` of a conv call whose
    ``k·s·n`` rows are ``k`` stacked copies of ``s`` samples of ``n`` rows, as one grouped
    weight-gradient convolution (one group per copy and sample)."""
    if x.shape[0] % (s * n):
        raise MissedGradient(f"cannot split a conv call of {x.shape[0]} rows into {s}×{n}")
    groups = x.shape[0] // n
    c_in, c_out = x.shape[1], d.shape[1]
    xg = x.view(groups, n, *x.shape[1:]).transpose(0, 1).reshape(n, groups * c_in, *x.shape[2:])
    dg = d.view(groups, n, *d.shape[1:]).transpose(0, 1).reshape(n, groups * c_out, *d.shape[2:])
    shape = (groups * c_out, c_in, *op.kernel_size)
    gw = torch.nn.grad.conv2d_weight(xg, shape, dg, op.stride, op.padding, op.dilation, groups)
    return gw.view(-1, s, c_out, c_in * op.kernel_size[0] * op.kernel_size[1]).sum(0)


class PerSampleCapture:
    """Per-sample gradients of one estimator pass over data repeated ``S`` times (see the module
    docstring).

    Use :meth:`targets` as the pass's ``y`` and :meth:`loss_fn` as its loss, inside
    ``with capture:``; after ``backward``, :meth:`per_sample` gives each sample's gradient of its
    own ``n``-point mean. ``loss_fn`` is the per-example loss of the original targets (default:
    cross-entropy). Raises :class:`UserError` for a model :func:`measured_ops` refuses.
    """

    def __init__(
        self, model: nn.Module, n_samples: int, n_points: int, loss_fn: LossFn | None = None
    ) -> None:
        ops = measured_ops(model)
        self.stages, self.head = ops[:-1], ops[-1]
        self.n_samples, self.n_points = int(n_samples), int(n_points)
        self.base_loss = loss_fn or cross_entropy
        self.target_dtype = torch.float64
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
        """``[S·n, 2]`` float64: ``y`` repeated ``S`` times beside each row's sample index."""
        self.target_dtype = y.dtype
        tag = torch.arange(self.n_samples, dtype=torch.float64, device=y.device)
        return torch.stack(
            [y.to(torch.float64).repeat(self.n_samples), tag.repeat_interleave(y.shape[0])], dim=1
        )

    def loss_fn(self, logits: torch.Tensor, tagged: torch.Tensor) -> torch.Tensor:
        """The per-example loss on tagged targets, recording the head's per-row gradients."""
        loss = self.base_loss(logits, tagged[:, 0].to(self.target_dtype))
        if not (loss.requires_grad and logits.requires_grad):
            return loss
        params = (
            [self.head.weight] if self.head.bias is None else [self.head.weight, self.head.bias]
        )
        t = torch.zeros_like(logits[:, 0], requires_grad=True)
        grads = torch.autograd.grad(
            logits[:, 0],
            params,
            grad_outputs=t,
            create_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        flat = torch.cat([grads[0][0], *([grads[1][:1]] if len(grads) > 1 else [])])
        if flat.requires_grad:
            eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
            (feats,) = torch.autograd.grad(flat, t, grad_outputs=eye, is_grads_batched=True)
            (dloss,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
            group = tagged[:, 1].round().long()
            self.rows.append(_keep_grad(loss, feats.T.contiguous(), dloss, group))
        return loss

    def _stage_grads(self, module: Op, calls: list) -> torch.Tensor:
        s, n = self.n_samples, self.n_points
        gw = module.weight.new_zeros(s, module.weight.shape[0], module.weight[0].numel())
        gb = module.weight.new_zeros(s, module.weight.shape[0])
        for d, x in calls:
            if d is None:
                continue
            if isinstance(module, nn.Conv2d):
                gw += _conv_per_sample(module, x, d, s, n)
                gb += d.reshape(-1, s, n, *d.shape[1:]).sum(dim=(0, 2, 4, 5))
                continue
            if x.dim() > 2 and x.shape[0] == s * n:
                x = x.reshape(s, n, -1, x.shape[-1]).permute(2, 0, 1, 3)
                d = d.reshape(s, n, -1, d.shape[-1]).permute(2, 0, 1, 3)
            elif x.dim() == 2 and x.shape[0] % (s * n) == 0:
                x = x.reshape(-1, s, n, x.shape[-1])
                d = d.reshape(-1, s, n, d.shape[-1])
            else:
                raise MissedGradient(
                    f"cannot split a Linear call of input shape {list(x.shape)} into {s} samples "
                    f"of {n} rows"
                )
            gw += torch.einsum("ksno,ksni->soi", d, x)
            gb += d.sum(dim=(0, 2))
        return torch.cat([gw.flatten(1), gb], dim=1) if module.bias is not None else gw.flatten(1)

    def _head_grads(self) -> torch.Tensor:
        s, head = self.n_samples, self.head
        k_out, n_in = head.weight.shape
        gw = head.weight.new_zeros(s, k_out, n_in)
        gb = head.weight.new_zeros(s, k_out)
        for d, feats, dloss, group in self.rows:
            if d is None:
                continue
            step = max(1, 2**22 // max(1, k_out * n_in))
            for a in range(0, d.shape[0], step):
                sl = slice(a, a + step)
                row = dloss[sl, :, None] * feats[sl, None, :n_in]
                gw.index_add_(0, group[sl], d[sl, None, None] * row)
            if head.bias is not None:
                gb.index_add_(0, group, d[:, None] * (dloss * feats[:, n_in:]))
        return torch.cat([gw.flatten(1), gb], dim=1) if head.bias is not None else gw.flatten(1)

    def per_sample(self) -> list[torch.Tensor]:
        """Per group, ``[S, P_k]``: each sample's gradient of its ``n``-point mean (the pass's
        loss is the mean over ``S·n`` rows, hence the factor ``S``). Raises
        :class:`MissedGradient` for an op call that does not split into the samples."""
        out = [self._stage_grads(m, c) for m, c in zip(self.stages, self.calls, strict=True)]
        out.append(self._head_grads())
        return [self.n_samples * g for g in out]


@torch.no_grad()
def _row_size(model: SBN, x: torch.Tensor) -> int:
    """The number of input and unit values of one example (shapes only, no sampling)."""
    h, total = x[:1], x[0].numel()
    for m in model.stages:
        h = m.preactivation(h) if isinstance(m, Stage) else m(h)
        total += h[0].numel() if isinstance(m, Stage) else 0
    return total


def sample_gradients(
    model: nn.Module,
    estimator: Estimator,
    x: torch.Tensor,
    y: torch.Tensor,
    n_samples: int,
    *,
    loss_fn: LossFn | None = None,
    chunk_rows: int = 200_000,
    chunk_elements: int = 2**23,
) -> tuple[list[torch.Tensor], float]:
    """``n_samples`` single-sample gradient estimates per group, ``[N, P_k]`` each, and the mean
    of the estimator's loss values.

    Chunks of ``S`` samples go through one pass each (:class:`PerSampleCapture`): at most
    ``chunk_rows`` rows and ``chunk_elements`` input and unit values (over all stages) per pass.
    Raises :class:`MissedGradient` when, in a chunk, the mean of the per-sample gradients differs
    from the pass's ``.grad``, and :class:`UserError` for a model or batch the estimator refuses.
    """
    parts: list[list[torch.Tensor]] = [[] for _ in measured_ops(model)]
    n = x.shape[0]
    per_chunk = max(1, min(chunk_rows // n, chunk_elements // (n * _row_size(model, x))))
    loss_sum = 0.0
    done = 0
    while done < n_samples:
        s = min(per_chunk, n_samples - done)
        model.zero_grad(set_to_none=True)
        reps = [s] + [1] * (x.dim() - 1)
        with PerSampleCapture(model, s, n, loss_fn) as cap:
            loss = estimator.loss(model, x.repeat(*reps), cap.targets(y), cap.loss_fn)
            loss.backward()
        grads = cap.per_sample()
        eps = torch.finfo(x.dtype).eps
        rtol, atol = max(1e-7, 1e3 * eps), max(1e-10, 1e3 * eps)
        for k, (g, full) in enumerate(zip(grads, flat_grads(model), strict=True)):
            scale = float(full.abs().max()) + float(g.abs().max()) / s
            if not torch.allclose(g.mean(0), full, rtol=rtol, atol=atol * scale):
                raise MissedGradient(
                    f"{estimator!r}: per-sample gradients of layer{k} do not add up to the "
                    "pass's gradient; the estimator reaches W, b other than through the op calls"
                )
            parts[k].append(g)
        loss_sum += loss.item() * s
        done += s
    model.zero_grad(set_to_none=True)
    return [torch.cat(p) for p in parts], loss_sum / n_samples
