"""A per-layer table of an SBN in the spirit of larq's model summary.

For each stage and the head: the output shape, the parameters by precision (1-bit: binary
weights; 32-bit: real weights, biases and the norm's ``γ, β`` and running mean/variance), the
memory of those parameters when binary weights are packed (``⌈bits/8⌉ + 4·floats`` bytes), and
the multiply-accumulates per example: *binary* when a ``±1`` weight meets a ``±1`` state (an XNOR–
popcount), *float* otherwise (pixels, real weights, average-pooled states).

Binary-weight networks with real activations (an ``nn.Sequential`` or a ResNet18) get one row per
Linear/Conv2d, named by its module path, with the parameters of the BatchNorms that follow it in
module order; their layers all read real values, so every MAC is a float MAC (with ``±1`` weights,
a signed add).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from ..network import SBN, Head, Stage
from ..units import BinaryUnit
from ..weights import using_weight_mode
from .fold import model_input_shape

__all__ = ["LayerRow", "Summary", "summary"]


@dataclass(frozen=True)
class LayerRow:
    """One row of the table."""

    name: str
    output_shape: tuple[int, ...]
    bit_params: int
    float_params: int
    binary_macs: int
    float_macs: int

    @property
    def memory_bytes(self) -> int:
        """Bytes with packed binary weights: ``⌈bits/8⌉ + 4·floats``."""
        return -(-self.bit_params // 8) + 4 * self.float_params


@dataclass(frozen=True)
class Summary:
    """The rows and totals; :meth:`table` renders them."""

    rows: tuple[LayerRow, ...]

    @property
    def bit_params(self) -> int:
        return sum(r.bit_params for r in self.rows)

    @property
    def float_params(self) -> int:
        return sum(r.float_params for r in self.rows)

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def float_macs(self) -> int:
        return sum(r.float_macs for r in self.rows)

    @property
    def packed_bytes(self) -> int:
        """Model size with packed binary weights."""
        return sum(r.memory_bytes for r in self.rows)

    @property
    def float32_bytes(self) -> int:
        """Model size with every parameter in float32."""
        return 4 * (self.bit_params + self.float_params)

    @property
    def compression(self) -> float:
        """``float32_bytes / packed_bytes``."""
        return self.float32_bytes / self.packed_bytes

    def table(self) -> str:
        """The table as text, one row per layer, then the totals."""
        head = (
            "layer",
            "output shape",
            "1-bit",
            "32-bit",
            "memory (B)",
            "binary MACs",
            "float MACs",
        )
        body = [
            (
                r.name,
                "(" + ", ".join(["-1", *map(str, r.output_shape)]) + ")",
                f"{r.bit_params:,}",
                f"{r.float_params:,}",
                f"{r.memory_bytes:,}",
                f"{r.binary_macs:,}",
                f"{r.float_macs:,}",
            )
            for r in self.rows
        ]
        total = (
            "total",
            "",
            f"{self.bit_params:,}",
            f"{self.float_params:,}",
            f"{self.packed_bytes:,}",
            f"{self.binary_macs:,}",
            f"{self.float_macs:,}",
        )
        cells = [head, *body, total]
        widths = [max(len(row[i]) for row in cells) for i in range(len(head))]

        def line(row: tuple[str, ...]) -> str:
            first = row[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest])

        rule = "-" * len(line(head))
        lines = [line(head), rule, *map(line, body), rule, line(total), ""]
        lines.append(f"model size, binary weights packed: {self.packed_bytes:,} B")
        lines.append(f"model size, all float32:           {self.float32_bytes:,} B")
        lines.append(f"compression ratio:                 {self.compression:.2f}x")
        return "\n".join(lines)


def _is_binary(op: nn.Module) -> bool:
    if parametrize.is_parametrized(op, "weight"):
        return True
    return bool((op.weight.detach().abs() == 1).all())


def _kind(op: nn.Linear | nn.Conv2d) -> str:
    return "Conv2d" if isinstance(op, nn.Conv2d) else "Linear"


def _norm_params(norm: nn.Module | None) -> int:
    if norm is None:
        return 0
    count = sum(p.numel() for p in norm.parameters())
    for name in ("running_mean", "running_var"):
        buf = getattr(norm, name, None)
        if buf is not None:
            count += buf.numel()
    return count


def _row(
    name: str, op: nn.Linear | nn.Conv2d, extra: int, reads_states: bool, out: tuple[int, ...]
) -> LayerRow:
    n_weights = op.weight.numel()
    binary = _is_binary(op)
    bias = op.bias.numel() if op.bias is not None else 0
    positions = math.prod(out[1:]) if isinstance(op, nn.Conv2d) else 1
    macs = n_weights * positions
    return LayerRow(
        name=name,
        output_shape=out,
        bit_params=n_weights if binary else 0,
        float_params=(0 if binary else n_weights) + bias + extra,
        binary_macs=macs if binary and reads_states else 0,
        float_macs=0 if binary and reads_states else macs,
    )


def _output_shapes(
    model: nn.Module, modules: list[nn.Module], input_shape: tuple[int, ...]
) -> dict[int, tuple[int, ...]]:
    """``id(module) -> output shape`` (without the batch) from one eval forward of zeros.

    Raises :class:`UserError` if the model cannot run on inputs of ``input_shape``.
    """
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _i, o: shapes.__setitem__(id(mod), tuple(o.shape[1:])))
        for m in modules
    ]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with using_weight_mode(model, "mode"):
            model(torch.zeros((1, *input_shape), dtype=dtype))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"the model cannot run on inputs of shape {list(input_shape)} ({first}); "
            "check input_shape"
        ) from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


@torch.no_grad()
def summary(model: nn.Module, input_shape: Sequence[int] | None = None) -> Summary:
    """The per-layer :class:`Summary` of ``model`` (shapes from one forward pass of zeros).

    ``input_shape`` (one example) is needed for models that do not carry it (an SBN does).
    Raises :class:`UserError` unless ``model`` is an :class:`~sbnkit.network.SBN`, an
    ``nn.Sequential`` or a :class:`~sbnkit.models.ResNet18`, or for a missing or wrong
    ``input_shape``.
    """
    shape = model_input_shape(model, input_shape, "summary")
    if not isinstance(model, SBN):
        return _graph_summary(model, shape)
    shapes = _output_shapes(model, [*model.stages, model.head], shape)
    rows, reads_states = [], False
    stages = [s for s in model.stages if isinstance(s, Stage)]
    for i, stage in enumerate(stages):
        rows.append(
            _row(
                f"stage{i} {_kind(stage.op)}",
                stage.op,
                _norm_params(stage.norm),
                reads_states,
                shapes[id(stage)],
            )
        )
        reads_states = isinstance(stage.unit, BinaryUnit)
    head: Head = model.head
    pooled = head.pool == "avg" and len(rows) > 0 and len(rows[-1].output_shape) == 3
    rows.append(_row("head Linear", head.linear, 0, reads_states and not pooled, shapes[id(head)]))
    return Summary(tuple(rows))


def _graph_summary(model: nn.Module, input_shape: tuple[int, ...]) -> Summary:
    """One row per Linear/Conv2d of a network with real activations (module docstring)."""
    ops = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not ops:
        raise UserError(f"the {type(model).__name__} has no Linear or Conv2d layer to summarise")
    shapes = _output_shapes(model, [m for _, m in ops], input_shape)
    extra = {name: 0 for name, _ in ops}
    owner = ops[0][0]  # norms before the first op count towards it
    for name, m in model.named_modules():
        if name in extra:
            owner = name
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            extra[owner] += _norm_params(m)
    rows = [_row(f"{name} {_kind(m)}", m, extra[name], False, shapes[id(m)]) for name, m in ops]
    return Summary(tuple(rows))
