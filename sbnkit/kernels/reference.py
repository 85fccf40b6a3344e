"""Plain reference flip-difference kernels (any device, any floating dtype), plus input checks.

With ``σ`` the logistic sigmoid and ``x = ±1``::

    dense   g[b,i]     = Σ_j G[b,j] (σ(a[b,j] - 2 W[j,i] x[b,i]) - σ(a[b,j]))
    conv2d  g[b,r,h,w] = Σ G[b,c,oh,ow] (σ(a[b,c,oh,ow] - 2 W[c,r,kh,kw] x[b,r,h,w])
                                         - σ(a[b,c,oh,ow]))
                         over c and (oh, ow, kh, kw) with oh·s - p + kh = h, ow·s - p + kw = w

The dense kernel broadcasts ``[b, j, i]`` blocks; the conv kernel unfolds ``x`` into patches,
applies the dense formula per patch and folds back. Both are chunked (over the batch, outputs
and positions) so that each temporary holds at most :data:`CHUNK_ELEMENTS` elements (32 MiB in
float64; the unfolded patches of one example if larger), and run under ``no_grad``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sbnkit.errors import UserError

__all__ = [
    "CHUNK_ELEMENTS",
    "check_conv2d",
    "check_dense",
    "flip_delta_conv2d_reference",
    "flip_delta_dense_reference",
]

CHUNK_ELEMENTS = 1 << 22


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def _check_common(name: str, tensors: dict[str, torch.Tensor], dims: int) -> None:
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise UserError(f"{name}: {key} must be a torch.Tensor, got {type(t).__name__}")
        want = 2 if key == "W" and dims == 2 else dims
        if t.dim() != want:
            raise UserError(f"{name}: {key} must have {want} dimensions, got shape {_shape(t)}")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        got = ", ".join(f"{k}={t.dtype}" for k, t in tensors.items())
        raise UserError(f"{name}: G, a, W, x must share one floating dtype, got {got}")
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        got = ", ".join(f"{k}={t.device}" for k, t in tensors.items())
        raise UserError(f"{name}: G, a, W, x must be on one device, got {got}")


def check_dense(G: torch.Tensor, a: torch.Tensor, W: torch.Tensor, x: torch.Tensor) -> None:
    """Raise :class:`UserError` (a ``ValueError``) unless the dense shapes agree."""
    name = "flip_delta_dense"
    _check_common(name, {"G": G, "a": a, "W": W, "x": x}, 2)
    if G.shape != a.shape:
        raise UserError(f"{name}: G {_shape(G)} and a {_shape(a)} must have the same shape")
    if W.shape != (a.shape[1], x.shape[1]):
        raise UserError(
            f"{name}: W must be [n_out, n_in] = [{a.shape[1]}, {x.shape[1]}], got {_shape(W)}"
        )
    if x.shape[0] != a.shape[0]:
        raise UserError(f"{name}: x {_shape(x)} and a {_shape(a)} must have the same batch size")


def _as_int(name: str, key: str, v: int | tuple[int, int], low: int) -> int:
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise UserError(f"{name}: {key} must be one int (equal in both dimensions), got {v}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UserError(f"{name}: {key} must be an int >= {low}, got {v!r}")
    return int(v)


def check_conv2d(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
) -> tuple[int, int]:
    """Raise :class:`UserError` unless the conv shapes agree; return ``(stride, padding)``."""
    name = "flip_delta_conv2d"
    _check_common(name, {"G": G, "a": a, "W": W, "x": x}, 4)
    s = _as_int(name, "stride", stride, 1)
    p = _as_int(name, "padding", padding, 0)
    if G.shape != a.shape:
        raise UserError(f"{name}: G {_shape(G)} and a {_shape(a)} must have the same shape")
    k = W.shape[2]
    if W.shape[3] != k or W.shape[0] != a.shape[1] or W.shape[1] != x.shape[1]:
        raise UserError(
            f"{name}: W must be [C_out, C_in, K, K] = [{a.shape[1]}, {x.shape[1]}, K, K], "
            f"got {_shape(W)}"
        )
    if x.shape[0] != a.shape[0]:
        raise UserError(f"{name}: x {_shape(x)} and a {_shape(a)} must have the same batch size")
    out = tuple((n + 2 * p - k) // s + 1 for n in x.shape[2:])
    if min(out) < 1 or tuple(a.shape[2:]) != out:
        raise UserError(
            f"{name}: x {_shape(x)} with K={k}, stride={s}, padding={p} gives outputs "
            f"{list(out)}, but a is {_shape(a)}"
        )
    return s, p


def flip_delta_dense_reference(
    G: torch.Tensor, a: torch.Tensor, W: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``g[b,i] = Σ_j G[b,j] (σ(a[b,j] - 2 W[j,i] x[b,i]) - σ(a[b,j]))`` by chunked broadcasting.
    Raises :class:`UserError` for inconsistent shapes or dtypes."""
    check_dense(G, a, W, x)
    with torch.no_grad():
        batch, n_out = a.shape
        n_in = x.shape[1]
        out = torch.zeros_like(x)
        if out.numel() == 0 or n_out == 0:
            return out
        nj = max(1, min(n_out, CHUNK_ELEMENTS // n_in))
        nb = max(1, min(batch, CHUNK_ELEMENTS // (n_in * nj)))
        s = torch.sigmoid(a)
        for b0 in range(0, batch, nb):
            xb = x[b0 : b0 + nb, None, :]
            for j0 in range(0, n_out, nj):
                t = W[None, j0 : j0 + nj, :] * xb
                t.mul_(-2).add_(a[b0 : b0 + nb, j0 : j0 + nj, None]).sigmoid_()
                t.sub_(s[b0 : b0 + nb, j0 : j0 + nj, None])
                out[b0 : b0 + nb] += torch.bmm(G[b0 : b0 + nb, None, j0 : j0 + nj], t)[:, 0]
        return out


def flip_delta_conv2d_reference(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
) -> torch.Tensor:
    """Conv flip difference (module docstring) by ``unfold``, per-patch dense formula, ``fold``.
    Raises :class:`UserError` for inconsistent shapes, dtypes, stride or padding."""
    s, p = check_conv2d(G, a, W, x, stride, padding)
    with torch.no_grad():
        batch, c_out, ho, wo = a.shape
        k = W.shape[2]
        n_loc = ho * wo
        patch = x.shape[1] * k * k
        out = torch.zeros_like(x)
        if x.numel() == 0 or c_out == 0:
            return out
        w2 = W.reshape(c_out, patch)
        a3 = a.reshape(batch, c_out, n_loc)
        s3 = torch.sigmoid(a3)
        g3 = G.reshape(batch, c_out, n_loc)
        nl = max(1, min(n_loc, CHUNK_ELEMENTS // patch))
        nc = max(1, min(c_out, CHUNK_ELEMENTS // (patch * nl)))
        nb = max(1, min(batch, CHUNK_ELEMENTS // (patch * nl * nc)))
        for b0 in range(0, batch, nb):
            bs = slice(b0, b0 + nb)
            xu = F.unfold(x[bs], k, padding=p, stride=s)  # [nb, C_in·K·K, L]
            acc = torch.zeros_like(xu)
            for l0 in range(0, n_loc, nl):
                ls = slice(l0, l0 + nl)
                xb = xu[:, None, :, ls]  # [nb, 1, patch, nl]
                for c0 in range(0, c_out, nc):
                    cs = slice(c0, c0 + nc)
                    t = w2[None, cs, :, None] * xb  # [nb, nc, patch, nl]
                    t.mul_(-2).add_(a3[bs, cs, None, ls]).sigmoid_()
                    t.sub_(s3[bs, cs, None, ls]).mul_(g3[bs, cs, None, ls])
                    acc[:, :, ls] += t.sum(1)
            out[bs] = F.fold(acc, tuple(x.shape[2:]), k, padding=p, stride=s)
        return out
