"""DBSCAN on cosine distance whose labels are scikit-learn's, built for a million faces.

``dbscan_cosine(x, eps, min_samples)`` returns the labels of
``sklearn.cluster.DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit(x.astype(np.float64))``
(verified against scikit-learn 1.9's source), without ever holding an N×N matrix or the list of eps-edges:

* sklearn normalises ``x̂ = x / sqrt(einsum('ij,ij->i', x, x))`` in float64, takes the distance
  ``clip(1 − x̂_i·x̂_j, 0, 2)`` and calls ``j`` a neighbour of ``i`` iff it is ``<= eps``. Every point is its
  own neighbour (sklearn zeroes the self-distance when it computes all pairs at once; in its chunked path
  ``1 − x̂_i·x̂_i`` is at most a few 1e-16, so this differs only for an ``eps`` below ~1e-13). A point is core
  iff its neighbour count (self included) is ``>= min_samples``.
* Clusters are the connected components of core points over eps-edges, numbered in the order of their
  lowest core index; a non-core point with core neighbours takes the smallest label among their clusters
  (the order in which sklearn's depth-first ``dbscan_inner`` reaches it); all others are noise (-1).

How. One pass over the upper triangle in blocks (:func:`facelake.vectors.gram.upper_blocks`). Each block's Gram
matrix is screened in the fastest measured precision (:func:`facelake.vectors.gram.select_backend`: numpy/torch
float32 or torch bfloat16, on the GPU when there is one). With ``t = 1 − eps`` and ``margin`` a proven bound
on ``|screened − sklearn's float64|``, a pair with ``G >= t + margin`` is a neighbour, one with
``G < t − margin`` is not, and each pair in between is re-checked with sklearn's own float64 formula.
Neighbour counts grow as blocks pass, so an edge whose endpoints are both already core is merged at once
into a union-find over points (``O(N)``) and dropped; the rest wait in a pending buffer that is re-scanned
after each block row. An edge is kept only while one endpoint has fewer than ``min_samples`` neighbours
(self included), and such a point has at most ``min_samples − 2`` edges, so the buffer never exceeds
``N·(min_samples − 2)`` edges: memory is ``O(N·d + block² + N·min_samples)`` whatever the number of edges.
At the end, the pending core–non-core edges give the border points their labels.

Float64 itself is not associative: sklearn's ``x̂_i·x̂_j`` comes from its BLAS's matrix product, whose
summation order (and so the last bits) depends on the library, the CPU and the chunk shapes. Pairs whose
float64 value lies within the float64 rounding bound of ``1 − eps`` are counted in
``stats["knife_edge_pairs"]``: for those, sklearn's own answer depends on its BLAS (exactly representable
inputs, e.g. coordinates ±½, have no rounding and are decided exactly).
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from facelake.lake.progress import Report
from facelake.vectors.gram import (
    GramBackend,
    block_pairs,
    pair_dots,
    pair_progress,
    select_backend,
    strict_matmul,
    upper_blocks,
)

_U64 = 2.0**-53
_U32 = 2.0**-24
_TINY = float(np.finfo(np.float64).tiny)
_SLACK = 1e-12
_ROW_CHUNK = 16384
_INVALID_SHOWN = 10
_TILE = 64


@dataclass
class DbscanResult:
    """Labels exactly as scikit-learn's DBSCAN gives them, core samples, and how they were computed."""

    labels: np.ndarray
    core: np.ndarray
    eps: float
    min_samples: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        """Number of clusters (noise excluded)."""
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def identity(self) -> np.ndarray:
        """int64 ``[N]``: clusters keep their label; noise points become ``n_clusters, n_clusters+1, …`` in index order."""
        identity = self.labels.astype(np.int64, copy=True)
        noise = identity < 0
        identity[noise] = self.n_clusters + np.arange(int(noise.sum()), dtype=np.int64)
        return identity

    @property
    def cluster_size(self) -> np.ndarray:
        """int64 ``[N]``: the size of each point's identity (1 for singletons)."""
        identity = self.identity
        return np.bincount(identity)[identity].astype(np.int64)


def _describe_rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in rows[:_INVALID_SHOWN])
    more = f" and {len(rows) - _INVALID_SHOWN} more" if len(rows) > _INVALID_SHOWN else ""
    return f"{len(rows)} row(s): {shown}{more}"


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    matrix = np.asarray(vectors)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"vectors must be a non-empty 2-d array [N, d], got shape {matrix.shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise ValueError(f"vectors must be numeric, got dtype {matrix.dtype}")
    return matrix


def unit_norms(vectors: np.ndarray, chunk: int = _ROW_CHUNK) -> np.ndarray:
    """float64 ``[N]`` row norms exactly as sklearn's ``normalize`` computes them (``sqrt(einsum)`` in float64).

    Raises ``ValueError`` naming the rows that hold a NaN/inf or are zero (sklearn would silently keep a zero
    row as the zero vector, at distance 1 from everything), or whose squared norm is subnormal or overflows
    (their "unit" rows would not have length 1, which the screening bound assumes).
    """
    matrix = _as_matrix(vectors)
    norms = np.empty(len(matrix), dtype=np.float64)
    bad_finite, bad_zero = [], []
    for start in range(0, len(matrix), chunk):
        rows = np.asarray(matrix[start : start + chunk], dtype=np.float64)
        finite = np.isfinite(rows).all(axis=1)
        squares = np.einsum("ij,ij->i", rows, rows)
        norms[start : start + len(rows)] = np.sqrt(squares)
        bad_finite.append(start + np.flatnonzero(~finite))
        degenerate = ~(squares >= _TINY) | ~np.isfinite(squares)
        bad_zero.append(start + np.flatnonzero(finite & degenerate))
    not_finite, zero = np.concatenate(bad_finite), np.concatenate(bad_zero)
    problems = []
    if len(not_finite):
        problems.append(f"NaN or infinite values in {_describe_rows(not_finite)}")
    if len(zero):
        problems.append(f"zero, subnormal or overflowing squared norm in {_describe_rows(zero)}")
    if problems:
        raise ValueError("cannot normalise vectors: " + "; ".join(problems))
    return norms


def _unit_rows(vectors: np.ndarray, norms: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
    """float64 ``x̂[rows]``, bit for bit sklearn's ``normalize(x.astype(float64))[rows]``."""
    return np.asarray(vectors[rows], dtype=np.float64) / norms[rows, None]


def _screen_copy(vectors: np.ndarray, norms: np.ndarray, backend: GramBackend) -> torch.Tensor:
    """The unit rows in the backend's screening dtype and device, converted chunk by chunk."""
    out = torch.empty(vectors.shape, dtype=backend.screen_dtype, device=backend.device)
    for start in range(0, len(vectors), _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        out[rows] = backend.prepare(_unit_rows(vectors, norms, rows).astype(np.float32))
    return out


def screening_margin(backend: GramBackend, dim: int) -> float:
    """Bound on ``|screened Gram value − sklearn's float64 x̂_i·x̂_j|`` for unit rows of dimension ``dim``.

    The backend's own bound, plus rounding the float64 unit rows to float32 before screening
    (``2u + u²``, u = 2⁻²⁴), plus float64's own dot-product error ``γ_d`` (u = 2⁻⁵³), each with 10%
    to spare, plus a 1e-12 slack for the rounding of ``1 − eps`` itself.
    """
    to_float32 = 1.1 * (2 * _U32 + _U32**2)
    return backend.error_bound(dim) + to_float32 + float64_bound(dim) + _SLACK


def float64_bound(dim: int) -> float:
    """Bound on float64's own rounding error of a dot product of two unit vectors of dimension ``dim``."""
    gamma = dim * _U64 / (1.0 - dim * _U64)
    return 1.1 * gamma + 4 * _U64


def float32_at_most(value: float) -> float:
    """The largest float32 that is ``<= value`` (a screening threshold that never drops a candidate)."""
    single = np.float32(value)
    if float(single) > value:
        single = np.nextafter(single, np.float32(-np.inf))
    return float(single)


def float32_at_least(value: float) -> float:
    """The smallest float32 that is ``>= value`` (a "surely above" threshold that never admits a doubtful pair)."""
    single = np.float32(value)
    if float(single) < value:
        single = np.nextafter(single, np.float32(np.inf))
    return float(single)


class UnionFind:
    """Union-find over point indices with vectorised finds and batch unions; a root is its tree's minimum."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def compress(self) -> None:
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self.parent = parent

    def find(self, nodes: np.ndarray) -> np.ndarray:
        roots = self.parent[nodes]
        for steps in range(1, 1 << 30):
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
            if steps == 8:
                self.compress()
                roots = self.parent[roots]
        self.parent[nodes] = roots
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of ``a[k]`` and ``b[k]`` for every k (each new root is the smallest old one)."""
        if len(a) == 0:
            return
        ra, rb = self.find(a), self.find(b)
        differ = ra != rb
        if not differ.any():
            return
        ra, rb = ra[differ], rb[differ]
        roots, inverse = np.unique(np.concatenate([ra, rb]), return_inverse=True)
        graph = coo_matrix(
            (np.ones(len(ra), dtype=np.int8), (inverse[: len(ra)], inverse[len(ra) :])),
            shape=(len(roots), len(roots)),
        )
        _, component = connected_components(graph, directed=False)
        _, first = np.unique(component, return_index=True)
        self.parent[roots] = roots[first][component]


class _EpsGraph:
    """Neighbour counts, the union-find of core points and the pending edge buffer, fed block by block."""

    def __init__(self, n: int, min_samples: int) -> None:
        self.min_samples = min_samples
        self.counts = np.ones(n, dtype=np.int64)
        self.sets = UnionFind(n)
        self.pending_rows: list[np.ndarray] = []
        self.pending_cols: list[np.ndarray] = []
        self.pending = 0
        self.pending_max = 0
        self.edges = 0
        self.core_core = 0
        self.union_seconds = 0.0

    def add(self, rows: np.ndarray, cols: np.ndarray, row_span: slice, col_span: slice) -> None:
        """Take the eps-edges (rows[k] < cols[k]) of one block whose rows and columns lie in the spans."""
        if len(rows) == 0:
            return
        self.edges += len(rows)
        counts = self.counts
        counts[row_span] += np.bincount(rows - row_span.start, minlength=row_span.stop - row_span.start)
        counts[col_span] += np.bincount(cols - col_span.start, minlength=col_span.stop - col_span.start)
        self._merge_or_keep(rows, cols)

    def _merge_or_keep(self, rows: np.ndarray, cols: np.ndarray) -> None:
        both = (self.counts[rows] >= self.min_samples) & (self.counts[cols] >= self.min_samples)
        started = time.perf_counter()
        self.sets.union(rows[both], cols[both])
        self.union_seconds += time.perf_counter() - started
        self.core_core += int(both.sum())
        keep = ~both
        if keep.any():
            self.pending_rows.append(rows[keep])
            self.pending_cols.append(cols[keep])
            self.pending += int(keep.sum())
            self.pending_max = max(self.pending_max, self.pending)

    def rescan(self) -> None:
        """Merge the pending edges whose endpoints have both become core since they were kept."""
        if not self.pending_rows:
            return
        rows, cols = np.concatenate(self.pending_rows), np.concatenate(self.pending_cols)
        self.pending_rows, self.pending_cols, self.pending = [], [], 0
        self._merge_or_keep(rows, cols)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """sklearn's labels and core mask from the final counts, sets and pending edges."""
        self.rescan()
        core = self.counts >= self.min_samples
        labels = np.full(len(core), -1, dtype=np.int64)
        core_index = np.flatnonzero(core)
        self.sets.compress()
        _, labels[core_index] = np.unique(self.sets.find(core_index), return_inverse=True)
        if self.pending_rows:
            rows, cols = np.concatenate(self.pending_rows), np.concatenate(self.pending_cols)
            core_row, core_col = core[rows], core[cols]
            border = np.concatenate([cols[core_row & ~core_col], rows[core_col & ~core_row]])
            via = np.concatenate([labels[rows[core_row & ~core_col]], labels[cols[core_col & ~core_row]]])
            best = np.full(len(core), np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(best, border, via)
            assigned = best < np.iinfo(np.int64).max
            labels[assigned] = best[assigned]
        return labels, core


def default_block(device: str) -> int:
    """The block edge used when none is given: 2048 rows on the CPU (cache-sized), 16384 on CUDA (few launches)."""
    return 16384 if device.startswith("cuda") else 2048


def _validate(eps: float, min_samples: int) -> None:
    if isinstance(eps, bool) or not (isinstance(eps, numbers.Real) and np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0 (as in scikit-learn), got {eps!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int | np.integer) or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")


def dbscan_cosine(
    vectors: np.ndarray,
    eps: float,
    min_samples: int = 2,
    *,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
    progress: Report | None = None,
) -> DbscanResult:
    """DBSCAN with cosine distance: scikit-learn's float64 labels, in blocks, never N×N (see the module doc).

    ``vectors`` [N, d] (any float or int dtype; rows need not be unit length, every row must be finite and
    non-zero: ``ValueError`` names the rows otherwise). ``screen`` picks the Gram screening precision
    (:data:`facelake.vectors.gram.SCREENS`; ``auto`` measures), ``block`` the block edge (default 2048 on the CPU,
    16384 on CUDA), ``device`` ``cpu``/``cuda`` (default: CUDA when present). ``progress`` receives a line
    (pairs screened of ``N(N-1)/2``, rate, ETA: :class:`facelake.lake.progress.Progress`) every 5 % or 30 s
    of the scan, and a last one at its end.
    """
    _validate(eps, min_samples)
    eps, min_samples = float(eps), int(min_samples)
    started = time.perf_counter()
    matrix = _as_matrix(vectors)
    n, dim = matrix.shape
    norms = unit_norms(matrix)
    normalise_seconds = time.perf_counter() - started
    started = time.perf_counter()
    backend = select_backend(screen, dim, device)
    select_seconds = time.perf_counter() - started
    block = block or default_block(backend.device)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    started = time.perf_counter()
    screened = _screen_copy(matrix, norms, backend)
    prepare_seconds = time.perf_counter() - started
    margin = screening_margin(backend, dim)
    threshold = 1.0 - eps
    low, high = float32_at_most(threshold - margin), float32_at_least(threshold + margin)
    knife = float64_bound(dim)

    graph = _EpsGraph(n, min_samples)
    scanned = pair_progress("DBSCAN scan", n, progress)
    band_pairs = knife_edge = 0
    gram_seconds = extract_seconds = recheck_seconds = 0.0
    sync = backend.device.startswith("cuda")
    scan_started = time.perf_counter()
    with strict_matmul(), torch.inference_mode():
        current_row = 0
        for i0, i1, j0, j1 in upper_blocks(n, block):
            if i0 != current_row:
                graph.rescan()
                current_row = i0
            t0 = time.perf_counter()
            left = screened[i0:i1]
            gram = backend.gram(left, left if i0 == j0 else screened[j0:j1])
            if sync:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            with serial_on_cpu(backend.device):
                rows, cols, sure = threshold_candidates(gram, low, high, diagonal=i0 == j0)
            rows += i0
            cols += j0
            t2 = time.perf_counter()
            gram_seconds += t1 - t0
            extract_seconds += t2 - t1
            scanned.advance(block_pairs(i0, i1, j0, j1))
            if len(rows) == 0:
                continue
            if not sure.all():
                band = ~sure
                accepted, knife_here = _recheck(matrix, norms, rows[band], cols[band], eps, threshold, knife)
                band_pairs += int(band.sum())
                knife_edge += knife_here
                sure[band] = accepted
                rows, cols = rows[sure], cols[sure]
            recheck_seconds += time.perf_counter() - t2
            graph.add(rows, cols, slice(i0, i1), slice(j0, j1))
        scan_seconds = time.perf_counter() - scan_started
    scanned.finish()
    started = time.perf_counter()
    labels, core = graph.labels()
    label_seconds = time.perf_counter() - started
    stats = {
        "screen": backend.name,
        "device": backend.device,
        "margin": margin,
        "block": block,
        "pairs_screened": n * (n - 1) // 2,
        "band_pairs": band_pairs,
        "knife_edge_pairs": knife_edge,
        "edges": graph.edges,
        "core_core_edges": graph.core_core,
        "pending_max": graph.pending_max,
        "pending_bound": n * max(min_samples - 2, 0),
        "seconds": {
            "normalise": normalise_seconds,
            "select_backend": select_seconds,
            "prepare": prepare_seconds,
            "scan": scan_seconds,
            "gram": gram_seconds,
            "extract": extract_seconds,
            "recheck": recheck_seconds,
            "union": graph.union_seconds,
            "labels": label_seconds,
        },
    }
    return DbscanResult(labels=labels, core=core, eps=eps, min_samples=min_samples, stats=stats)


@contextlib.contextmanager
def serial_on_cpu(device: str) -> Iterator[None]:
    """One torch thread for the block's small follow-up ops on the CPU: with two or more, each op waits at
    an OpenMP barrier, and on a busy machine a descheduled thread turns 1 ms of work into tens of ms."""
    if device != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def threshold_candidates(
    gram: torch.Tensor, low: float, high: float, *, diagonal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local ``(row, col)`` of the block's pairs with ``gram >= low`` (``row < col`` on a diagonal block), and
    whether each is ``>= high``, on the host.

    Few pairs lie near the threshold, and a full mask plus ``nonzero`` over the block costs about as much
    as the product itself at d=512. So each row is cut into tiles of ``_TILE`` columns, one cheap max
    reduction finds the tiles holding a candidate, and only those tiles are searched.
    """
    if diagonal:
        gram.fill_diagonal_(float("-inf"))
    height, width = gram.shape
    tiled = width - width % _TILE
    rows, cols, values = [], [], []
    if tiled:
        tiles = gram[:, :tiled].view(height, tiled // _TILE, _TILE)
        hot = torch.nonzero(tiles.amax(dim=2) >= low)
        if len(hot):
            inside = tiles[hot[:, 0], hot[:, 1]]
            found = torch.nonzero(inside >= low)
            tile = hot[found[:, 0]]
            rows.append(tile[:, 0])
            cols.append(tile[:, 1] * _TILE + found[:, 1])
            values.append(inside[found[:, 0], found[:, 1]])
    if tiled < width:
        rest = gram[:, tiled:]
        found = torch.nonzero(rest >= low)
        rows.append(found[:, 0])
        cols.append(found[:, 1] + tiled)
        values.append(rest[found[:, 0], found[:, 1]])
    if not rows:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=bool)
    row, col, sure = torch.cat(rows), torch.cat(cols), torch.cat(values) >= high
    if diagonal:
        upper = row < col
        row, col, sure = row[upper], col[upper], sure[upper]
    return row.cpu().numpy(), col.cpu().numpy(), sure.cpu().numpy()


def _recheck(
    vectors: np.ndarray,
    norms: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    eps: float,
    threshold: float,
    knife: float,
) -> tuple[np.ndarray, int]:
    """sklearn's float64 decision ``clip(1 − x̂_i·x̂_j, 0, 2) <= eps`` for the band pairs, and how many are knife-edge."""
    index, inverse = np.unique(np.concatenate([rows, cols]), return_inverse=True)
    unit = _unit_rows(vectors, norms, index)
    dots = pair_dots(unit, inverse[: len(rows)], inverse[len(rows) :])
    distance = np.clip(1.0 - dots, 0.0, 2.0)
    return distance <= eps, int((np.abs(dots - threshold) <= knife).sum())


def identity_centroids(vectors: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """float32 ``[K, d]``: row k is the L2-normalised mean of the unit rows of identity k (ids 0..K-1, all present)."""
    matrix = _as_matrix(vectors)
    identity = np.asarray(identity)
    if identity.shape != (len(matrix),) or not np.issubdtype(identity.dtype, np.integer):
        raise ValueError(f"identity must be an integer array of shape ({len(matrix)},), got {identity.shape}")
    if identity.min() < 0:
        raise ValueError("identity ids must be >= 0 (noise must already be singleton ids: use .identity)")
    sizes = np.bincount(identity)
    if (sizes == 0).any():
        raise ValueError(
            f"identity ids must be 0..K-1 with none missing; missing: {np.flatnonzero(sizes == 0)[:10]}"
        )
    norms = unit_norms(matrix)
    order = np.argsort(identity, kind="stable")
    sorted_ids = identity[order]
    sums = np.zeros((len(sizes), matrix.shape[1]), dtype=np.float64)
    for start in range(0, len(order), _ROW_CHUNK):
        ids = sorted_ids[start : start + _ROW_CHUNK]
        unit = _unit_rows(matrix, norms, order[start : start + _ROW_CHUNK])
        heads = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
        sums[ids[heads]] += np.add.reduceat(unit, heads, axis=0)
    lengths = np.linalg.norm(sums, axis=1)
    if (lengths == 0).any():
        raise ValueError(f"identities whose unit vectors sum to zero: {np.flatnonzero(lengths == 0)[:10]}")
    return (sums / lengths[:, None]).astype(np.float32)
