"""Neighbour lists of every candidate from row blocks of its Gram matrix, never N x N.

A model's candidates are its layers and their concatenation; a candidate's similarity of
samples i, j is its Gram entry G[i, j] = <x_i, x_j>, divided by the rows' norms (the square
roots of G's diagonal) when rows are L2-normalised. The concatenation's Gram matrix is the sum of
the layers' ones, so its rows come from the per-layer row blocks and the features are never
concatenated.

Lists are computed row block by row block: a block of B rows against all N columns (one matrix
product per layer), top-k kept, block dropped. The concatenation's rows are summed over the
layers in a panel of P rows (P >= B) before their top-k is taken. The arithmetic is that of the
dense [L + 1, N, N] stack, so lists are identical to it, ties included (`torch.topk` on the same
full rows): blocks hold a multiple of 64 rows (the last one absorbs the remainder: the CPU
matrix product then gives every row the bits of the full product), the concatenation's Gram
matrix is the layers' added one after the other in layer order (`add_layers`; the dense stack
`LayerKernels.grams` adds them the same way), and the norms are the diagonal of the products,
taken from the products themselves when one block holds all rows, else from diagonal blocks.

Memory (float32 entries, L layers, k neighbours):
  kept    [L + 1, N, k] indices and values: 12 (L + 1) N k bytes (65,536 samples, 13 layers,
          k = 10: 110 MB), and the row norms, 4 (L + 1) N bytes;
  working one block [B, N] (`BLOCK_BYTES`), the concatenation's panel [P, N] (`PANEL_BYTES`),
          and one layer of features [N, D];
  work    O(N^2 * sum of layer widths) whatever the memory: exact search, as the dense path.
A source read from a file is read once per layer per panel: once when the panel holds all N
rows (N <= 16,384 with the default budget).

Set operations on lists (`MemberTable`) use sorted keys and binary search: O(N k log(N k)) per
candidate, no N x N membership matrix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from platonic.core.layers import LayerSource

BLOCK_BYTES = 256 << 20
PANEL_BYTES = 1 << 30
ALIGN = 64  # rows per block: a multiple of this
NORM_BLOCK = 128  # rows of the diagonal blocks giving the norms


def rows_within(budget: int, row_bytes: int, n: int) -> int:
    """Rows of `row_bytes` each that fit in `budget`: a multiple of 64, at least 64, at most n."""
    return min(n, max(ALIGN, budget // max(row_bytes, 1) // ALIGN * ALIGN))


def row_blocks(n: int, rows: int) -> list[tuple[int, int]]:
    """[start, end) blocks of `rows` rows covering 0..n; a remainder joins the last block."""
    starts = list(range(0, n, rows))
    if len(starts) > 1 and n - starts[-1] < rows:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def panels(blocks: list[tuple[int, int]], rows: int) -> list[list[tuple[int, int]]]:
    """Consecutive blocks grouped into panels of at most `rows` rows (at least one block each)."""
    out: list[list[tuple[int, int]]] = []
    for block in blocks:
        if out and block[1] - out[-1][0][0] <= rows:
            out[-1].append(block)
        else:
            out.append([block])
    return out


def add_layers(terms: torch.Tensor) -> torch.Tensor:
    """Σ over the first axis, the terms added one after the other from a zero: the one order in
    which the concatenation's Gram entries are summed everywhere (any block size, any device)."""
    total = torch.zeros_like(terms[0])
    for term in terms:
        total += term
    return total


def gram_diagonals(source: LayerSource) -> torch.Tensor:
    """[L + 1, N]: the diagonal of each candidate's Gram matrix (index 0: concatenation), as the
    dense products give it, from diagonal blocks of 128 rows."""
    blocks = row_blocks(source.n, min(NORM_BLOCK, source.n))
    out = torch.empty(source.num_layers + 1, source.n, device=source.device)
    for layer in range(source.num_layers):
        x = source.layer(layer)
        for start, end in blocks:
            out[layer + 1, start:end] = torch.mm(x[start:end], x[start:end].T).diagonal()
    out[0] = add_layers(out[1:])
    return out


def row_norms(diagonals: torch.Tensor) -> torch.Tensor:
    return diagonals.sqrt().clamp_min(1e-12)


@dataclass
class Neighbours:
    """Every candidate's top-k lists: `indices` [L + 1, N, k] nearest first, `values` the
    similarities there (the candidate's normalised Gram entries)."""

    indices: torch.Tensor
    values: torch.Tensor

    def to(self, device: str | torch.device) -> Neighbours:
        return Neighbours(self.indices.to(device), self.values.to(device))

    def reordered(self, perm: torch.Tensor) -> Neighbours:
        """The lists of the samples reordered by the permutation `perm` (row i = old row perm[i])."""
        return Neighbours(permute_knn(self.indices, perm), self.values[..., perm, :])


def permute_knn(knn: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Neighbour lists [..., N, k] of the samples reordered by `perm` (row i = old row perm[i])."""
    return inverse_permutation(perm)[knn[..., perm, :]]


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm), device=perm.device)
    return inverse


def top_neighbours(sim: torch.Tensor, start: int, norms: torch.Tensor | None, topk: int,
                   exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of Gram rows start.. (`sim`, [B, N], changed in place): normalised as the dense
    stack is (rows, then columns), own entry excluded."""
    if norms is not None:
        sim /= norms[start:start + len(sim), None]
        sim /= norms[None, :]
    if exclude_self:
        own = torch.arange(len(sim), device=sim.device)
        sim[own, own + start] = float("-inf")
    values, indices = torch.topk(sim, topk, dim=1)
    return indices, values


def neighbour_lists(source: LayerSource, normalize: bool, topk: int, exclude_self: bool = True,
                    diagonals: torch.Tensor | None = None) -> tuple[Neighbours, torch.Tensor | None]:
    """Every candidate's top-k lists by similarity (index 0: concatenation), block by block,
    and the Gram diagonals used to normalise: `diagonals` when given, else taken from the
    products themselves when one block holds every row, else from diagonal blocks."""
    n, num_layers = source.n, source.num_layers
    indices = torch.empty(num_layers + 1, n, topk, dtype=torch.long, device=source.device)
    values = torch.empty(num_layers + 1, n, topk, device=source.device)
    blocks = row_blocks(n, rows_within(BLOCK_BYTES, 4 * n, n))
    learn = normalize and diagonals is None and len(blocks) == 1
    if normalize and diagonals is None and not learn:
        diagonals = gram_diagonals(source)
    if learn:
        diagonals = torch.empty(num_layers + 1, n, device=source.device)
    for panel in panels(blocks, rows_within(PANEL_BYTES, 4 * n, n)):
        first = panel[0][0]
        concat = torch.zeros(panel[-1][1] - first, n, device=source.device)
        for layer in range(num_layers):
            x = source.layer(layer)
            norms = None
            for start, end in panel:
                sim = torch.mm(x[start:end], x.T)
                concat[start - first:end - first].add_(sim)
                if learn:
                    diagonals[layer + 1] = sim.diagonal()
                if normalize and norms is None:
                    norms = row_norms(diagonals[layer + 1])
                indices[layer + 1, start:end], values[layer + 1, start:end] = top_neighbours(
                    sim, start, norms, topk, exclude_self)
        if learn:
            diagonals[0] = add_layers(diagonals[1:])
        norms = row_norms(diagonals[0]) if normalize else None
        for start, end in panel:
            indices[0, start:end], values[0, start:end] = top_neighbours(
                concat[start - first:end - first], start, norms, topk, exclude_self)
    return Neighbours(indices, values), diagonals


DENSE_TABLE_BYTES = 64 << 20  # a MemberTable keeps its N x N table of bits below this

class MemberTable:
    """Which candidates hold which pairs: for lists [C, N, k] (C candidates), the distinct pairs
    (i, j), j among some candidate's neighbours of i, as sorted keys i * N + j, each with a bit
    per candidate. Any pairs are then looked up by binary search, one search per pair for all C
    candidates at once: O(C N k log(C N k)) to build, C^2 N k / 8 bytes at most, no N x N matrix;
    a lookup of M pairs holds M C bytes. Below `DENSE_TABLE_BYTES` (N = 1,024 with 31 candidates:
    4 MiB) the bits also sit in an N x N table, so that a lookup is one gather, not a search
    (the calibrated null does 100s of lookups of N k (Ly + 1) pairs)."""

    def __init__(self, knn: torch.Tensor):
        count, n, k = knn.shape
        self.n, self.count = n, count
        rows = torch.arange(n, device=knn.device).unsqueeze(1) * n
        self.keys, inverse = torch.unique((knn + rows).flatten(), return_inverse=True)
        candidate = torch.arange(count, device=knn.device).repeat_interleave(n * k)
        bits = torch.zeros(len(self.keys), (count + 7) // 8, dtype=torch.int32, device=knn.device)
        bits.index_put_((inverse, candidate // 8), (1 << (candidate % 8)).int(), accumulate=True)
        self.bits = bits.to(torch.uint8)
        self.shifts = torch.arange(8, dtype=torch.uint8, device=knn.device)
        # [256, 8]: the bits of every byte value, to turn a histogram of bytes into bit counts
        self.byte_bits = ((torch.arange(256, device=knn.device)[:, None] >> self.shifts.long()) & 1).double()
        self.dense = None  # small N: the bits of every pair (i, j) at i * N + j, looked up directly
        if n * n * self.bits.shape[1] <= DENSE_TABLE_BYTES:
            self.dense = torch.zeros(n * n, self.bits.shape[1], dtype=torch.uint8, device=knn.device)
            self.dense[self.keys] = self.bits

    def packed(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[M, C / 8 rounded up] uint8: the candidate bits of each pair (rows, cols) (`rows`
        broadcast against `cols`; M pairs once flattened)."""
        queries = (rows * self.n + cols).flatten()
        if self.dense is not None:
            return torch.index_select(self.dense, 0, queries)
        pos = torch.searchsorted(self.keys, queries).clamp_(max=len(self.keys) - 1)
        return self.bits[pos] * (self.keys[pos] == queries).unsqueeze(1)

    def lookup(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[*shape, C] uint8 (rows and cols broadcast to `shape`), 1 where (rows, cols) is among
        a candidate's pairs."""
        rows, cols = torch.broadcast_tensors(rows, cols)  # (torch.broadcast_shapes imports sympy)
        packed = self.packed(rows, cols)
        unpacked = ((packed.unsqueeze(-1) >> self.shifts) & 1).flatten(1)[:, :self.count]
        return unpacked.view(*rows.shape, self.count)

    def pair_counts(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[C, G] int64: for the pairs (rows, cols) of `cols`' shape [G, ...] (`rows` broadcast
        against it), how many of each group's pairs each candidate holds. Counted from a
        histogram of the packed bytes (one bincount), not by unpacking every pair's C bits: the
        null counts (Ly + 1) N k pairs per permutation."""
        groups, width = len(cols), self.bits.shape[1]
        packed = self.packed(rows, cols).view(groups, -1, width)
        slots = torch.arange(groups * width, dtype=torch.int32, device=packed.device) << 8
        histogram = torch.bincount((packed.int() + slots.view(groups, 1, width)).flatten(),
                                   minlength=groups * width * 256)
        counts = histogram.view(groups, width, 256).double() @ self.byte_bits  # [G, bytes, 8]
        return counts.flatten(1)[:, :self.count].T.long()


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Small index operations on the CPU (list lookups, gathers) run on one thread: thread hand-offs would cost more
    than the work (several times more on a busy machine). The thread count is restored."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def own_rows(knn: torch.Tensor) -> torch.Tensor:
    """[N, k]: each entry's row index i (the sample whose list it is)."""
    n, k = knn.shape[-2:]
    return torch.arange(n, device=knn.device).unsqueeze(1).expand(n, k)


def row_entries(source: LayerSource, norms: torch.Tensor | None, cols: torch.Tensor,
                by_products: bool | None = None) -> torch.Tensor:
    """[L + 1, N, M]: every candidate's (normalised) Gram entries (i, cols[i, t]), cols [N, M].

    From row blocks of the Gram matrices (one product per layer and block, entries gathered:
    the dense stack's bits) when M is not small against N (`by_products` None: N <= 16 M),
    else from dot products of the gathered rows (N M D work instead of N^2 D)."""
    n, m = cols.shape
    layers = source.num_layers
    out = torch.empty(layers + 1, n, m, device=source.device)
    blocks = row_blocks(n, rows_within(BLOCK_BYTES, 4 * n, n))
    by_products = n <= 16 * m if by_products is None else by_products
    for layer in range(layers):
        x = source.layer(layer)
        if by_products:
            for start, end in blocks:
                out[layer + 1, start:end] = torch.mm(x[start:end], x.T).gather(1, cols[start:end])
        else:
            step = max(1, BLOCK_BYTES // (4 * m * x.shape[1]))
            for start in range(0, n, step):
                rows = x[start:start + step]
                out[layer + 1, start:start + step] = torch.einsum(
                    "rd,rmd->rm", rows, x[cols[start:start + step]])
    out[0] = add_layers(out[1:])
    if norms is not None:
        out /= norms[:, :, None]
        out /= norms[:, cols]
    return out
