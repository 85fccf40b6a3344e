"""The layer table of :func:`sbnkit.deploy.summary` against numbers computed by hand."""

from __future__ import annotations

import pytest
import torch

from sbnkit import deploy, models
from sbnkit.errors import UserError


def test_mlp_table_by_hand():
    torch.manual_seed(0)
    model = models.mlp(
        (10,), 3, hidden=(7, 5), norm="batch", binary_weights=True, binary_first=False
    )
    s = deploy.summary(model)
    rows = [
        (r.name, r.output_shape, r.bit_params, r.float_params, r.binary_macs, r.float_macs)
        for r in s.rows
    ]
    assert rows == [
        # real 10x7 weights (70) + BatchNorm γ, β, mean, var (4·7); reads pixels: float MACs
        ("stage0 Linear", (7,), 0, 98, 0, 70),
        # binary 7x5 weights; BatchNorm 4·5; reads ±1 states: binary MACs
        ("stage1 Linear", (5,), 35, 20, 35, 0),
        # real head 5x3 + bias 3; real weights, so float MACs
        ("head Linear", (3,), 0, 18, 0, 15),
    ]
    assert [r.memory_bytes for r in s.rows] == [98 * 4, 5 + 20 * 4, 18 * 4]  # ⌈35/8⌉ = 5
    assert (s.bit_params, s.float_params, s.binary_macs, s.float_macs) == (35, 136, 35, 85)
    assert s.packed_bytes == 549
    assert s.float32_bytes == (35 + 136) * 4 == 684
    assert s.compression == pytest.approx(684 / 549)
    table = s.table()
    assert "549 B" in table and "684 B" in table and "1.25x" in table
    assert len(table.splitlines()) == 2 + 3 + 2 + 1 + 3  # head, rows, total, blank, sizes


def test_convnet_table_by_hand():
    torch.manual_seed(0)
    model = models.convnet((1, 8, 8), 3, channels=(4, 6), norm="affine", binary_weights=True)
    s = deploy.summary(model)
    rows = [
        (r.output_shape, r.bit_params, r.float_params, r.binary_macs, r.float_macs) for r in s.rows
    ]
    assert rows == [
        # 3x3 conv 1->4, stride 1, pad 1 on 8x8 pixels: 36 bits, affine 2·4; 36·64 float MACs
        ((4, 8, 8), 36, 8, 0, 36 * 64),
        # 3x3 conv 4->6, stride 2, pad 1: 4x4 output, 216 bits; 216·16 binary MACs
        ((6, 4, 4), 216, 12, 216 * 16, 0),
        # avg-pooled head 6->3 with bias: pooled states are real, float MACs
        ((3,), 0, 21, 0, 18),
    ]
    assert [r.memory_bytes for r in s.rows] == [5 + 32, 27 + 48, 84]
    assert s.packed_bytes == 196
    assert s.float32_bytes == (252 + 41) * 4


def test_summary_refuses_other_modules():
    with pytest.raises(UserError, match="SBN"):
        deploy.summary(torch.nn.Linear(3, 2))
