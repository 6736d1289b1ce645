"""Exact nearest neighbours of unit vectors by cosine, in blocks that never hold N×N.

Each row's nearest other row (``max_{j≠i} x_i·x_j``; ties → smallest ``j``) is found in two stages:

1. *Screening*: Gram blocks in the fastest measured precision (:func:`facelake.vectors.gram.select_backend`,
   bfloat16 where that wins). Only the upper triangle of blocks is computed for a self search; an
   off-diagonal block serves its rows and its columns. Every entry within ``2·bound`` of its row's
   running screened maximum (or within ``bound`` of a caller's proven lower bound) is kept as a candidate,
   where ``bound`` is :meth:`GramBackend.error_bound` — so the true arg-max is always among them.
2. *Exact*: the dot product of every surviving candidate is recomputed in float64 from the float32
   vectors; the largest wins (ties → smallest index) and its cosine is returned rounded to float32.

The same machinery answers "nearest row of another set" (:func:`nearest_in`), which the packer uses for its
gallery term and for the stochastic mode's batch-against-all search.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from facelake.lake.progress import Progress, Report
from facelake.vectors.gram import (
    GramBackend,
    block_pairs,
    default_device,
    measured_backends,
    pair_progress,
    select_backend,
)

DEFAULT_BLOCK = {"cpu": 4096, "cuda": 16384}
"""Rows per Gram block by device (a 4096² bfloat16 block is 32 MiB)."""

DENSE_BAND = 16.0
"""Candidates per row above which a bfloat16 screen costs more in exact re-checks than it saves: tightly
packed points put hundreds of neighbours inside bfloat16's error band (±0.013 at d=512), float32's is ±3e-5."""

_EXACT_CHUNK = 1 << 13
_FLOAT32 = GramBackend("float32", "cpu", input_roundoff=0.0, output_roundoff=0.0)
_UNIT_TOLERANCE = 1e-6


@dataclass
class Neighbours:
    """Each row's nearest other row and that cosine (exact, float32)."""

    index: np.ndarray
    cosine: np.ndarray


def unit_rows(vectors: np.ndarray | torch.Tensor, name: str = "vectors") -> np.ndarray:
    """``vectors`` as C-contiguous float32 unit rows (re-normalised only if a norm is off by > 1e-6).

    Raises ``ValueError`` naming ``name`` for a non-2-D, empty, non-finite or zero-length input.
    """
    array = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array [N, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected floating-point vectors, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name}: row {int(np.argmax(norms == 0))} has zero length")
    if np.abs(norms - 1.0).max() > _UNIT_TOLERANCE:
        array = (array / norms[:, None]).astype(np.float32)
    return array


def search_block(device: str, block: int | None, rows: int | None = None) -> int:
    """Rows per block: ``block`` if given (>= 1), else the device default; for a self search of ``rows``
    points at most a sixth of them (but >= 1024), so the upper triangle skips most of the lower half."""
    if block is not None:
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        return int(block)
    default = DEFAULT_BLOCK.get(device.split(":")[0], DEFAULT_BLOCK["cpu"])
    return default if rows is None else min(default, max(1024, -(-rows // 6)))


def screening_bound(backend: GramBackend, vectors: torch.Tensor) -> float:
    """Screening error bound for ``vectors`` (the unit-vector bound scaled by the largest squared norm)."""
    largest = float(torch.linalg.vector_norm(vectors.double(), dim=1).max())
    return backend.error_bound(vectors.shape[1]) * max(1.0, largest) ** 2


def screened_gram(backend: GramBackend, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Screened block ``a @ b.T`` in the backend's own output dtype (no float32 copy of bfloat16 blocks)."""
    if backend.name == "numpy-float32":
        return backend.gram(a, b)
    return a @ b.T


def _round_down(threshold: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``threshold`` in ``dtype``, rounded toward −∞ so a comparison never drops a candidate."""
    if dtype == torch.float32:
        return threshold
    low = threshold.to(dtype)
    return torch.where(low.float() > threshold, torch.nextafter(low, low.new_tensor(float("-inf"))), low)


def _hits(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the True entries of a 2-D mask (numpy's flatnonzero is ~4× faster on the CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


class _Candidates:
    """Screened candidate edges ``row → col`` with their screened values, and each row's running maximum."""

    def __init__(self, rows: int, bound: float, lower: torch.Tensor | None, device: str) -> None:
        self.bound = bound
        self.running = torch.full((rows,), float("-inf"), device=device)
        self.floor = (lower.float() - bound) if lower is not None else None
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def threshold(self, start: int, stop: int) -> torch.Tensor:
        thr = self.running[start:stop] - 2.0 * self.bound
        return thr if self.floor is None else torch.maximum(thr, self.floor[start:stop])

    def add_rows(self, screened: torch.Tensor, r0: int, c0: int) -> None:
        """Rows ``r0…`` of the search against columns ``c0…``: update maxima, keep the entries near them."""
        stop = r0 + screened.shape[0]
        self.running[r0:stop] = torch.maximum(self.running[r0:stop], screened.amax(1).float())
        thr = self.threshold(r0, stop)
        flat = _hits(screened >= _round_down(thr, screened.dtype)[:, None]).to(screened.device)
        if flat.numel():
            width = screened.shape[1]
            values = screened.reshape(-1)[flat].float()
            self.parts.append((flat // width + r0, flat % width + c0, values))

    def add_columns(self, screened: torch.Tensor, r0: int, c0: int) -> None:
        """The columns ``c0…`` of an off-diagonal block as rows of the search (the shared symmetric half)."""
        stop = c0 + screened.shape[1]
        self.running[c0:stop] = torch.maximum(self.running[c0:stop], screened.amax(0).float())
        thr = self.threshold(c0, stop)
        flat = _hits(screened >= _round_down(thr, screened.dtype)[None, :]).to(screened.device)
        if flat.numel():
            width = screened.shape[1]
            values = screened.reshape(-1)[flat].float()
            self.parts.append((flat % width + c0, flat // width + r0, values))

    def nearest(
        self, left: torch.Tensor, right: torch.Tensor, stats: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact nearest ``right`` row of every ``left`` row among the survivors (``stats`` receives
        ``candidates``, their number)."""
        rows, cols = self.survivors()
        if stats is not None:
            stats["candidates"] = len(rows)
        return exact_nearest(left, right, rows, cols, len(self.running))

    def survivors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges whose screened value clears the row's final threshold."""
        rows = torch.cat([p[0] for p in self.parts])
        cols = torch.cat([p[1] for p in self.parts])
        values = torch.cat([p[2] for p in self.parts])
        keep = values >= self.threshold(0, len(self.running))[rows]
        return rows[keep], cols[keep]


def exact_dots(
    left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``left[rows[k]] · right[cols[k]]`` accumulated in float64 from the float32 vectors, chunked."""
    if left.device.type == "cpu":
        return torch.from_numpy(_exact_dots_numpy(left.numpy(), right.numpy(), rows.numpy(), cols.numpy()))
    out = torch.empty(len(rows), dtype=torch.float64, device=left.device)
    for start in range(0, len(rows), _EXACT_CHUNK):
        stop = start + _EXACT_CHUNK
        out[start:stop] = torch.einsum(
            "ij,ij->i", left[rows[start:stop]].double(), right[cols[start:stop]].double()
        )
    return out


def _exact_dots_numpy(left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), _EXACT_CHUNK):
        stop = start + _EXACT_CHUNK
        a, b = left[rows[start:stop]], right[cols[start:stop]]
        out[start:stop] = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return out


def _float32_dots(left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _EXACT_CHUNK):
        stop = start + _EXACT_CHUNK
        out[start:stop] = np.einsum("ij,ij->i", left[rows[start:stop]], right[cols[start:stop]])
    return out


def exact_nearest(
    left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``left``, the candidate ``right[cols]`` with the largest exact dot (ties → smallest
    column), given candidate pairs (``rows``, ``cols``) covering all ``n`` rows: index, float64 value.

    On the CPU a float32 pass (proven bound ``_FLOAT32.error_bound``) first drops the candidates that
    cannot be the maximum; the rest are recomputed in float64.
    """
    r, c = rows.cpu().numpy(), cols.cpu().numpy()
    if left.device.type == "cpu" and len(r) > 2 * n:
        order = np.argsort(r, kind="stable")
        r, c = r[order], c[order]
        approx = _float32_dots(left.numpy(), right.numpy(), r, c)
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        best = np.maximum.reduceat(approx, starts)
        span = np.diff(np.r_[starts, len(r)])
        keep = approx >= np.repeat(best, span) - 2.0 * _FLOAT32.error_bound(left.shape[1]) * 1.0001
        r, c = r[keep], c[keep]
    e = exact_dots(left, right, torch.from_numpy(r).to(left.device), torch.from_numpy(c).to(left.device))
    e = e.cpu().numpy()
    order = np.lexsort((c, -e, r))
    r, c, e = r[order], c[order], e[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = r[1:] != r[:-1]
    if first.sum() != n:
        raise RuntimeError(f"screening lost rows: {n - int(first.sum())} of {n} have no candidate")
    index = torch.from_numpy(c[first].astype(np.int64))
    value = torch.from_numpy(e[first])
    return index.to(left.device), value.to(left.device)


def nearest_among(
    left: torch.Tensor, right: torch.Tensor, lists: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``i`` of ``left`` [n, d], the row of ``right`` with the largest exact dot among the columns
    ``lists[i]`` [n, k] (ties → smallest column): index, float64 value.

    One batched float32 product over the gathered candidates decides every row whose float32 maximum clears
    its runner-up by twice float32's proven error bound; only the other rows are re-ranked in float64.
    """
    n, k = lists.shape
    dots = torch.bmm(right[lists], left.unsqueeze(2)).squeeze(2)
    best, where = dots.max(dim=1)
    margin = 2.0 * _FLOAT32.error_bound(left.shape[1]) * 1.0001
    close = (dots >= (best - margin).unsqueeze(1)).sum(dim=1) > 1
    index = lists.gather(1, where.unsqueeze(1)).squeeze(1)
    rows = torch.arange(n, device=left.device)
    value = exact_dots(left, right, rows, index)
    tied = torch.nonzero(close).squeeze(1)
    if len(tied):
        local = torch.arange(len(tied), device=left.device).repeat_interleave(k)
        picked, exact = exact_nearest(left[tied], right, local, lists[tied].reshape(-1), len(tied))
        index[tied], value[tied] = picked, exact
    return index, value


def float32_backend(device: str, dim: int) -> GramBackend:
    """The fastest measured float32 screen on ``device`` (numpy's BLAS or torch)."""
    names = [name for name, _ in measured_backends(device, dim) if not name.endswith("bfloat16")]
    return select_backend(names[0], dim, device)


def band_density(points: torch.Tensor, backend: GramBackend, sample: int = 256) -> float:
    """Mean number of other rows inside the screening band of a sampled row's maximum (a cheap probe)."""
    n = points.shape[0]
    rows = torch.linspace(0, n - 1, min(sample, n), device=points.device).long().unique()
    gram = screened_gram(backend, backend.prepare(points[rows]), backend.prepare(points)).float()
    gram[torch.arange(len(rows), device=points.device), rows] = float("-inf")
    top = gram.amax(1, keepdim=True)
    return float((gram >= top - 2.0 * screening_bound(backend, points)).sum(1).float().mean())


def auto_backend(points: torch.Tensor, screen: str, device: str) -> GramBackend:
    """``select_backend``, except that ``auto`` moves from bfloat16 to float32 for densely packed points."""
    backend = select_backend(screen, points.shape[1], device)
    if screen != "auto" or os.environ.get("FACELAKE_GRAM_SCREEN") or backend.screen_dtype == torch.float32:
        return backend
    if points.shape[0] > 2 and band_density(points, backend) > DENSE_BAND:
        return float32_backend(device, points.shape[1])
    return backend


def _cross_blocks(
    queries: torch.Tensor,
    base: torch.Tensor,
    backend: GramBackend,
    block: int,
    exclude: torch.Tensor | None,
) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
    """``(i0, i1, j0, j1, screened block)`` over all blocks of ``queries @ base.T`` (both prepared), with
    ``exclude[i]`` (a base row query ``i`` may not pick) set to −∞."""
    n, m = queries.shape[0], base.shape[0]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(0, m, block):
            j1 = min(j0 + block, m)
            gram = screened_gram(backend, queries[i0:i1], base[j0:j1])
            if exclude is not None:
                own = exclude[i0:i1]
                inside = torch.nonzero((own >= j0) & (own < j1)).squeeze(1)
                gram[inside, own[inside] - j0] = float("-inf")
            yield i0, i1, j0, j1, gram


def blocked_topk(
    queries: torch.Tensor,
    base: torch.Tensor,
    backend: GramBackend,
    block: int,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest screened values of ``queries @ base.T`` per row (both already prepared by the
    backend), as float32 values and int64 indices [n, k], in blocks; ``exclude[i]``: a base row query ``i``
    may not pick."""
    n, m = queries.shape[0], base.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k must lie in [1, {m}], got {k}")
    values = torch.full((n, k), float("-inf"), device=queries.device)
    index = torch.zeros((n, k), dtype=torch.int64, device=queries.device)
    for i0, i1, j0, j1, gram in _cross_blocks(queries, base, backend, block, exclude):
        v, ix = gram.topk(min(k, j1 - j0), dim=1)
        merged_v = torch.cat([values[i0:i1], v.float()], dim=1)
        merged_i = torch.cat([index[i0:i1], ix + j0], dim=1)
        top_v, where = merged_v.topk(k, dim=1)
        values[i0:i1], index[i0:i1] = top_v, merged_i.gather(1, where)
    return values, index


def topk_search(
    points: torch.Tensor, backend: GramBackend, block: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's ``k`` nearest other rows by screened value, plus its exact nearest neighbour.

    Full (not upper-triangle) blocks, one ``topk`` per block row. Returns (rows, cols, float32 dots of
    those pairs recomputed from the float32 vectors, exact arg-max index, exact max dot float64). A row
    whose band around its screened maximum holds more than ``k`` entries is resolved by an exact search.
    """
    n = points.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 vectors for a neighbour search, got {n}")
    screened = backend.prepare(points)
    own = torch.arange(n, device=points.device)
    values, index = blocked_topk(screened, screened, backend, block, k, exclude=own)
    rows = torch.arange(n, device=points.device).repeat_interleave(k)
    cols = index.reshape(-1)
    dots = exact_dots(points, points, rows, cols).float()
    crowded = values[:, -1] >= values[:, 0] - 2.0 * screening_bound(backend, points)
    best_index, best = exact_nearest(points, points, rows, cols, n)
    if bool(crowded.any()):
        hard = torch.nonzero(crowded).squeeze(1)
        extra_index, extra = cross_search(points[hard], points, backend, block, exclude=hard)
        best_index[hard], best[hard] = extra_index, extra
    return rows, cols, dots, best_index, best


def self_search(
    points: torch.Tensor,
    backend: GramBackend,
    block: int,
    *,
    lower: torch.Tensor | None = None,
    screened: torch.Tensor | None = None,
    stats: dict | None = None,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest other row of every row of ``points`` (float32 unit rows on the backend's device).

    ``lower``: optional proven lower bounds on each row's maximum exact dot (tightens the screening band);
    ``screened``: ``points`` already prepared by the backend; ``stats`` receives ``candidates`` (the
    number re-checked exactly); ``progress`` is advanced by each block's pairs (:func:`block_pairs`).
    Returns (index int64, exact dot float64).
    """
    n = points.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 vectors for a nearest-neighbour search, got {n}")
    screened = backend.prepare(points) if screened is None else screened
    found = _Candidates(n, screening_bound(backend, points), lower, points.device.type)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(i0, n, block):
            j1 = min(j0 + block, n)
            gram = screened_gram(backend, screened[i0:i1], screened[j0:j1])
            if i0 == j0:
                gram.fill_diagonal_(float("-inf"))
                found.add_rows(gram, i0, j0)
            else:
                found.add_rows(gram, i0, j0)
                found.add_columns(gram, i0, j0)
            if progress is not None:
                progress.advance(block_pairs(i0, i1, j0, j1))
    return found.nearest(points, points, stats)


def cross_search(
    queries: torch.Tensor,
    base: torch.Tensor,
    backend: GramBackend,
    block: int,
    *,
    lower: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    screened_base: torch.Tensor | None = None,
    stats: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest row of ``base`` for every row of ``queries`` (float32 unit rows on the backend's device).

    ``exclude[i]``: a base row that query ``i`` may not pick (its own index when the base contains the
    queries). Returns (index int64, exact dot float64).
    """
    m = base.shape[0]
    if m < 1 or (exclude is not None and m < 2):
        raise ValueError(f"base holds {m} rows: too few to search")
    q_screened = backend.prepare(queries)
    b_screened = backend.prepare(base) if screened_base is None else screened_base
    bound = max(screening_bound(backend, queries), screening_bound(backend, base))
    n = queries.shape[0]
    found = _Candidates(n, bound, lower, queries.device.type)
    for i0, _, j0, _, gram in _cross_blocks(q_screened, b_screened, backend, block, exclude):
        found.add_rows(gram, i0, j0)
    return found.nearest(queries, base, stats)


def nearest_neighbours(
    vectors: np.ndarray,
    *,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
    progress: Report | None = None,
) -> Neighbours:
    """Each row's nearest other row by cosine (exact; ties → smallest index), blocked, never N×N.

    ``vectors`` [N, d] (N >= 2) are used as float32 unit rows (re-normalised if they are not);
    ``screen`` names a :mod:`facelake.vectors.gram` screen (``auto`` measures); ``block`` rows per Gram block;
    ``progress`` receives a line (pairs scanned of ``N(N-1)/2``, rate, ETA) every 5 % or 30 s, and a last one.
    """
    unit = unit_rows(vectors)
    device = device or default_device()
    points = torch.from_numpy(unit).to(device)
    backend = auto_backend(points, screen, device)
    scanned = pair_progress("nearest-neighbour scan", len(points), progress)
    block = search_block(device, block, len(points))
    index, value = self_search(points, backend, block, progress=scanned)
    scanned.finish()
    return Neighbours(index=index.cpu().numpy(), cosine=value.cpu().numpy().astype(np.float32))


def nearest_in(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
) -> Neighbours:
    """Each query's nearest row of ``base`` by cosine (exact; ties → smallest index), blocked."""
    q = unit_rows(queries, "queries")
    b = unit_rows(base, "base")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but base has {b.shape[1]}")
    device = device or default_device()
    backend = select_backend(screen, q.shape[1], device)
    qt, bt = torch.from_numpy(q).to(device), torch.from_numpy(b).to(device)
    index, value = cross_search(qt, bt, backend, search_block(device, block))
    return Neighbours(index=index.cpu().numpy(), cosine=value.cpu().numpy().astype(np.float32))
