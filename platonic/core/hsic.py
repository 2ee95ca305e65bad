"""HSIC and CKA of every pair of candidates, without N x N matrices where the kernel allows.

`cka` and `unbiased_cka` compare the centred kernels of two candidates, K = X Xᵀ for the
row-normalised features X (a layer, or all layers concatenated). Two exact ways give the grid:

- Feature space (linear kernel). With Xc the column-centred X (HKH = Xc Xcᵀ), the biased HSIC
  is ||Xcᵀ Yc||²_F, and the unbiased estimator (Song et al. 2012, eq. 5; unchanged by centring
  the features, which adds f_i + f_j to K off its diagonal) is
      (||Xcᵀ Yc||² - (1 + 2 / (m - 2)) Σ_i k_i l_i + tr K tr L / ((m - 1)(m - 2))) / (m (m - 3))
  with k_i = ||xc_i||², l_i = ||yc_i||². A concatenation's Xc is its layers' blocks scaled by its
  own row norms, so its products are sums of per-layer-pair products: each pair of layers gives
  one product [2 D_x, N] x [N, 2 D_y] (each layer under its own and under the concatenation's
  row weights), float32 over row chunks summed in float64.
  Work N (4 ΣD_x ΣD_y + self terms Σ_l (2 D_l)² + Σ_{l<l'} D_l D_l'); memory one layer of each
  side (twice: two weightings) and [2 D_x, 2 D_y].
- Blocked Gram (any kernel). The centred kernel rows of every candidate of both sides, a panel
  of P rows at a time, and their inner products; the centring from each kernel's row sums
  (from the features for the linear kernel, a first pass over the panels for rbf).
  Work N² (ΣD_x + ΣD_y + (L_x + 1)(L_y + 1)); memory one panel, (L_x + L_y + 2) P N float32
  (`PANEL_BYTES`).
The grid takes the one with fewer multiply-adds: the Gram path at the paper's N = 1,024 with
wide layers, feature space once N outgrows the layers' widths. HSIC(K, K) of each candidate is
kept per model and reused (a permutation of the samples does not change it). Values agree with
the dense computation within float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from platonic.core.neighbours import PANEL_BYTES, add_layers, row_blocks, rows_within
from platonic.errors import PlatonicError

if TYPE_CHECKING:
    from platonic.core.alignment import LayerKernels

DENSE_BYTES = 1 << 30  # the calibration keeps a model's centred kernels whole below this
PRODUCT_ROWS = 4096  # rows per float32 product in feature space, summed in float64


@dataclass(frozen=True)
class Kind:
    """Which HSIC: unbiased or biased, and the kernel ('ip' or 'rbf' with its sigma)."""

    unbiased: bool
    kernel: str = "ip"
    sigma: float = 1.0

    @classmethod
    def of(cls, unbiased: bool, kernel_metric: str, rbf_sigma: float) -> Kind:
        kernel = kernel_metric.lower()
        if kernel not in ("ip", "rbf"):
            raise PlatonicError(f"unknown kernel_metric {kernel_metric!r}; use 'ip' or 'rbf'")
        return cls(unbiased, kernel, float(rbf_sigma))


def cka_grid(kx: LayerKernels, ky: LayerKernels, kind: Kind) -> np.ndarray:
    """CKA of every candidate pair: HSIC(K, L) / (sqrt(HSIC(K, K) HSIC(L, L)) + 1e-6)."""
    if kind.kernel == "ip" and feature_cost(kx, ky, kind) < gram_cost(kx, ky, kind):
        cross, self_x, self_y = feature_hsic(kx, ky, kind)
    else:
        cross, self_x, self_y = gram_hsic(kx, ky, kind)
    return (cross / (torch.sqrt(torch.outer(self_x, self_y)) + 1e-6)).cpu().numpy()


# ---- what is kept per model ----------------------------------------------------------------------

def _permutation_base(k: LayerKernels) -> tuple[LayerKernels, torch.Tensor] | None:
    """(base, order) when `k` is a permutation of another model's samples, else None."""
    return getattr(k, "permutation_of", None)


def _invariants(k: LayerKernels) -> dict[Any, Any]:
    """Where terms that a permutation of the samples does not change are kept: the base's."""
    found = _permutation_base(k)
    return (found[0] if found else k).memo


def self_terms(k: LayerKernels, kind: Kind) -> torch.Tensor | None:
    """HSIC(K, K) of each candidate when already known (it does not change with a permutation)."""
    return _invariants(k).get(("self", kind))


def _remember_self(k: LayerKernels, kind: Kind, value: torch.Tensor) -> torch.Tensor:
    _invariants(k)[("self", kind)] = value
    return value


def has_centred(k: LayerKernels, kind: Kind) -> bool:
    """Whether the model's (or its base's) centred kernels are kept whole."""
    return ("centred", kind) in _invariants(k)


def centred_stack(k: LayerKernels, kind: Kind) -> torch.Tensor | None:
    """The [L + 1, N, N] centred kernels when `keep_centred` kept them, else None."""
    found = _permutation_base(k)
    if found:
        base, order = found
        stack = centred_stack(base, kind)
        return None if stack is None else stack[:, order[:, None], order[None, :]]
    return k.memo.get(("centred", kind))


def keep_centred(k: LayerKernels, kind: Kind) -> None:
    """Keep the model's centred kernels whole if they fit in `DENSE_BYTES` (for the
    calibration's many permutations: each is then an indexing, not new products)."""
    if _permutation_base(k) or ("centred", kind) in k.memo:
        return
    if 4 * len(k) * k.n * k.n <= DENSE_BYTES:
        k.memo[("centred", kind)] = centred_rows(k, kind, None, 0, k.n)


# ---- the cost of each way ------------------------------------------------------------------------

def _weightings(k: LayerKernels) -> int:
    return 2 if k.normalize else 1


def feature_cost(kx: LayerKernels, ky: LayerKernels, kind: Kind) -> float:
    cost = (_weightings(kx) * kx.source.num_layers * kx.source.width
            * _weightings(ky) * ky.source.num_layers * ky.source.width)
    for k in (kx, ky):
        if self_terms(k, kind) is None:
            layers, width = k.source.num_layers, k.source.width
            cost += layers * (_weightings(k) * width) ** 2 + layers * (layers - 1) / 2 * width**2
    return float(kx.n) * cost


def gram_cost(kx: LayerKernels, ky: LayerKernels, kind: Kind) -> float:
    cost = len(kx) * len(ky)
    for k in (kx, ky):
        if not has_centred(k, kind):
            passes = 2 if kind.kernel == "rbf" else 1
            cost += passes * k.source.num_layers * k.source.width
    return float(kx.n) ** 2 * cost


# ---- feature space -------------------------------------------------------------------------------

def centred_pieces(k: LayerKernels, layer: int) -> tuple[torch.Tensor, list[tuple[slice, tuple[int, ...]]]]:
    """Layer `layer` under each row weighting it appears with, column-centred, side by side:
    [N, W D], and for each piece its columns and the candidates it belongs to (the layer's own
    candidate layer + 1, and the concatenation 0)."""
    x = k.source.layer(layer)
    width = x.shape[1]
    if k.norms is None:
        pieces, owners = [x], [(layer + 1, 0)]
    else:
        pieces = [x / k.norms[layer + 1, :, None], x / k.norms[0, :, None]]
        owners = [(layer + 1,), (0,)]
    a = torch.cat(pieces, dim=1)
    a -= (a.sum(dim=0, dtype=torch.float64) / len(a)).to(a.dtype)
    return a, [(slice(i * width, (i + 1) * width), own) for i, own in enumerate(owners)]


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aᵀ b in float64, from float32 products over `PRODUCT_ROWS` rows at a time."""
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, len(a), PRODUCT_ROWS):
        out += (a[start:start + PRODUCT_ROWS].T @ b[start:start + PRODUCT_ROWS]).double()
    return out


def _add_diagonal(diag: torch.Tensor, a: torch.Tensor, parts: list) -> None:
    for cols, owners in parts:
        sq = a[:, cols].double().square().sum(dim=1)
        for c in owners:
            diag[c] += sq


def _unbiased(raw: torch.Tensor, diag_x: torch.Tensor, diag_y: torch.Tensor, m: int) -> torch.Tensor:
    """The unbiased HSIC from ||Xcᵀ Yc||² (`raw`) and the centred rows' squared norms."""
    both = diag_x @ diag_y.T
    traces = torch.outer(diag_x.sum(dim=1), diag_y.sum(dim=1))
    return (raw - (1 + 2 / (m - 2)) * both + traces / ((m - 1) * (m - 2))) / (m * (m - 3))


def feature_hsic(kx: LayerKernels, ky: LayerKernels,
                 kind: Kind) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC of every pair, and of each candidate with itself, from feature-space products."""
    m, device = kx.n, kx.source.device
    raw = torch.zeros(len(kx), len(ky), dtype=torch.float64, device=device)
    diag_x = torch.zeros(len(kx), m, dtype=torch.float64, device=device)
    diag_y = torch.zeros(len(ky), m, dtype=torch.float64, device=device)
    for lx in range(kx.source.num_layers):
        a, parts_a = centred_pieces(kx, lx)
        _add_diagonal(diag_x, a, parts_a)
        for ly in range(ky.source.num_layers):
            b, parts_b = centred_pieces(ky, ly)
            if lx == 0:
                _add_diagonal(diag_y, b, parts_b)
            squares = product(a, b).square_()
            for cols_a, own_a in parts_a:
                for cols_b, own_b in parts_b:
                    value = squares[cols_a, cols_b].sum()
                    for i in own_a:
                        for j in own_b:
                            raw[i, j] += value
    cross = _unbiased(raw, diag_x, diag_y, m) if kind.unbiased else raw
    return cross, feature_self(kx, kind), feature_self(ky, kind)


def feature_self(k: LayerKernels, kind: Kind) -> torch.Tensor:
    """HSIC(K, K) of each candidate from feature-space products (kept per model)."""
    known = self_terms(k, kind)
    if known is not None:
        return known
    m, layers = k.n, k.source.num_layers
    raw = torch.zeros(layers + 1, dtype=torch.float64, device=k.source.device)
    diag = torch.zeros(layers + 1, m, dtype=torch.float64, device=k.source.device)
    for la in range(layers):
        a, parts = centred_pieces(k, la)
        _add_diagonal(diag, a, parts)
        squares = product(a, a).square_()
        for cols, owners in parts:
            for c in owners:
                raw[c] += squares[cols, cols].sum()
        concat_a = a[:, parts[-1][0]]
        for lb in range(la + 1, layers):
            b, parts_b = centred_pieces(k, lb)
            raw[0] += 2 * product(concat_a, b[:, parts_b[-1][0]]).square_().sum()
    if kind.unbiased:
        raw = torch.stack([_unbiased(raw[c].view(1, 1), diag[c:c + 1], diag[c:c + 1], m)[0, 0]
                           for c in range(layers + 1)])
    return _remember_self(k, kind, raw)


# ---- blocked Gram --------------------------------------------------------------------------------

def kernel_rows(k: LayerKernels, kind: Kind, start: int, end: int) -> torch.Tensor:
    """[L + 1, end - start, N]: rows start..end of every candidate's kernel matrix (normalised
    Gram matrix, or its rbf), computed as the dense stack is."""
    n, layers = k.n, k.source.num_layers
    out = torch.empty(layers + 1, end - start, n, device=k.source.device)
    for layer in range(layers):
        x = k.source.layer(layer)
        torch.mm(x[start:end], x.T, out=out[layer + 1])
    out[0] = add_layers(out[1:])
    if k.normalize and (start, end) == (0, n) and k.known_diagonals() is None:
        k.learn_diagonals(out.diagonal(dim1=1, dim2=2).clone())
    if k.norms is not None:
        out /= k.norms[:, start:end, None]
        out /= k.norms[:, None, :]
    if kind.kernel == "rbf":
        sq = k.diagonals if k.norms is None else k.diagonals / k.norms / k.norms
        out.mul_(-2).add_(sq[:, start:end, None]).add_(sq[:, None, :]).clamp_min_(0)
        out.div_(-2 * kind.sigma**2).exp_()
    if kind.unbiased:
        _zero_own_entries(out, start)
    return out


def _zero_own_entries(rows: torch.Tensor, start: int) -> None:
    """Set the entries (i, i) of kernel rows start.. to 0 (the unbiased HSIC's zero diagonal)."""
    own = torch.arange(rows.shape[1], device=rows.device)
    rows[:, own, own + start] = 0


def row_sums(k: LayerKernels, kind: Kind) -> torch.Tensor:
    """[L + 1, N] float64: each candidate's kernel row sums (own entry left out when unbiased)."""
    found = _permutation_base(k)
    if found:
        return row_sums(found[0], kind)[:, found[1]]
    key = ("row_sums", kind)
    if key not in k.memo:
        k.memo[key] = _linear_row_sums(k, kind) if kind.kernel == "ip" else _panel_row_sums(k, kind)
    return k.memo[key]


def _linear_row_sums(k: LayerKernels, kind: Kind) -> torch.Tensor:
    """K 1 = X̂ (X̂ᵀ 1) from the features, for every candidate."""
    layers = k.source.num_layers
    out = torch.zeros(layers + 1, k.n, dtype=torch.float64, device=k.source.device)
    norms = None if k.norms is None else k.norms.double()
    for layer in range(layers):
        x = k.source.layer(layer).double()
        for c in (layer + 1, 0):
            w = torch.ones(k.n, dtype=torch.float64, device=x.device) if norms is None else 1 / norms[c]
            out[c] += w * (x @ (x.T @ w))
    if kind.unbiased:
        own = k.diagonals.double()
        out -= own if norms is None else own / norms / norms
    return out


def _panel_row_sums(k: LayerKernels, kind: Kind) -> torch.Tensor:
    out = torch.empty(len(k), k.n, dtype=torch.float64, device=k.source.device)
    for start, end in row_blocks(k.n, _panel_rows(k)):
        out[:, start:end] = kernel_rows(k, kind, start, end).sum(dim=2, dtype=torch.float64)
    return out


def _panel_rows(*models: LayerKernels) -> int:
    n = models[0].n
    return rows_within(PANEL_BYTES, 4 * n * sum(len(k) + 2 for k in models), n)


def centred_rows(k: LayerKernels, kind: Kind, sums: torch.Tensor | None, start: int,
                 end: int) -> torch.Tensor:
    """Rows start..end of every candidate's centred kernel: H K H, or the U-centred kernel
    (zero diagonal) for the unbiased HSIC; `sums` are the kernels' row sums (None when the rows
    are all N rows: they give their sums themselves)."""
    m = k.n
    rows = kernel_rows(k, kind, start, end)
    if sums is None:
        sums = rows.sum(dim=2, dtype=torch.float64)
    total = sums.sum(dim=1)
    if kind.unbiased:
        rows -= (sums[:, start:end, None] / (m - 2)).float()
        rows -= (sums[:, None, :] / (m - 2)).float()
        rows += (total / ((m - 1) * (m - 2))).float()[:, None, None]
        _zero_own_entries(rows, start)
    else:
        rows -= (sums[:, start:end, None] / m).float()
        rows -= (sums[:, None, :] / m).float()
        rows += (total / m**2).float()[:, None, None]
    return rows


def inner_products(a: torch.Tensor, b: torch.Tensor | None = None, chunk: int = 1 << 14) -> torch.Tensor:
    """a @ b.T (or each row's squared norm when b is None) in float64, from float32 products
    over chunks of columns: one float32 sum over N * N terms would lose about 1e-5."""
    out = torch.zeros(a.shape[0], *(() if b is None else (b.shape[0],)), dtype=torch.float64,
                      device=a.device)
    for start in range(0, a.shape[1], chunk):
        block = a[:, start:start + chunk]
        out += (block * block).sum(dim=1) if b is None else block @ b[:, start:start + chunk].T
    return out


def gram_hsic(kx: LayerKernels, ky: LayerKernels,
              kind: Kind) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC of every pair and of each candidate with itself, from centred kernel rows."""
    m = kx.n
    blocks = row_blocks(m, _panel_rows(kx, ky))
    sums_x, sums_y = ((None, None) if len(blocks) == 1
                      else (row_sums(kx, kind), row_sums(ky, kind)))
    known_x, known_y = self_terms(kx, kind), self_terms(ky, kind)
    cross = torch.zeros(len(kx), len(ky), dtype=torch.float64, device=kx.source.device)
    self_x = torch.zeros(len(kx), dtype=torch.float64, device=kx.source.device)
    self_y = torch.zeros(len(ky), dtype=torch.float64, device=kx.source.device)
    stack_x, stack_y = centred_stack(kx, kind), centred_stack(ky, kind)
    for start, end in blocks:
        cx = (centred_rows(kx, kind, sums_x, start, end) if stack_x is None
              else stack_x[:, start:end]).flatten(1)
        cy = (centred_rows(ky, kind, sums_y, start, end) if stack_y is None
              else stack_y[:, start:end]).flatten(1)
        cross += inner_products(cx, cy)
        if known_x is None:
            self_x += inner_products(cx)
        if known_y is None:
            self_y += inner_products(cy)
    scale = 1.0 / (m * (m - 3)) if kind.unbiased else 1.0
    self_x = known_x if known_x is not None else _remember_self(kx, kind, self_x * scale)
    self_y = known_y if known_y is not None else _remember_self(ky, kind, self_y * scale)
    return cross * scale, self_x, self_y


# ---- one pair on resampled rows (the bootstrap) --------------------------------------------------

def weighted_cka(x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, unbiased: bool) -> float:
    """CKA (linear kernel) of the sample in which row i of x and y appears counts[i] times, as
    the metric computes it on those rows, from [D_x, D_y] products: N (D_x D_y + D_x² + D_y²)."""
    m = int(counts.sum())
    weights = counts.double()
    root = weights.sqrt().float()[:, None]
    centred = [f - ((weights @ f.double()) / m).float() for f in (x, y)]
    scaled = [c * root for c in centred]
    diag = [c.double().square().sum(dim=1) for c in centred]

    def value(i: int, j: int) -> torch.Tensor:
        raw = product(scaled[i], scaled[j]).square_().sum()
        if not unbiased:
            return raw
        both = (weights * diag[i] * diag[j]).sum()
        traces = (weights * diag[i]).sum() * (weights * diag[j]).sum()
        return (raw - (1 + 2 / (m - 2)) * both + traces / ((m - 1) * (m - 2))) / (m * (m - 3))

    return (value(0, 1) / (torch.sqrt(value(0, 0) * value(1, 1)) + 1e-6)).item()
