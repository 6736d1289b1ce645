"""Near-duplicate removal over stored CLIP embeddings: every pair above a similarity threshold, found exactly,
grouped, and each group reduced to one kept image.

Pairs. Similarity is the one definition of :mod:`facelake.clip.similarity` (float64 dot of the stored float16
vectors). One pass over the upper triangle in blocks (:func:`facelake.vectors.gram.upper_blocks`), each
block screened in the fastest measured precision (:func:`facelake.vectors.gram.select_backend`) exactly as
:func:`facelake.clusters.dbscan.dbscan_cosine` screens its eps-edges, with the same pieces: with
``margin`` a proven bound on ``|screened − similarity|``, a pair screened ``>= threshold + margin`` is a
near-duplicate, one below ``threshold − margin`` is not, and each pair in between is decided by its float64
similarity (strictly greater than the threshold). The pairs found do not depend on the screen or the block
size, so neither do the groups or the keep-list.

Groups are the connected components of the pairs (:class:`facelake.clusters.dbscan.UnionFind`). The
rule that keeps one image per group (:data:`KEEP_RULE`): the largest resolution (width × height of the
original image), then the smallest key (``image_path``), then the smallest source name, then the smallest row.
Works on one embedding set or on several of one space (:func:`facelake.clip.layout.combine`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from facelake.clip.layout import ClipEmbeddings, combine
from facelake.clip.similarity import as_stored, max_norm, pair_similarity, screen_copy, screening_margin
from facelake.clusters.dbscan import (
    UnionFind,
    default_block,
    float32_at_least,
    float32_at_most,
    float64_bound,
    serial_on_cpu,
    threshold_candidates,
)
from facelake.vectors.gram import select_backend, strict_matmul, upper_blocks

DEFAULT_THRESHOLD = 0.92
"""SFHQ's de-duplication threshold: no two kept images have CLIP similarity above it."""
KEEP_RULE = (
    "one image per group of near-duplicates: largest width*height, then smallest image_path, then smallest "
    "source, then smallest row"
)


@dataclass
class NearDuplicatePairs:
    """Every pair ``rows[k] < cols[k]`` with similarity > threshold, its float64 similarity, and how it was found."""

    rows: np.ndarray
    cols: np.ndarray
    similarity: np.ndarray
    threshold: float
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def _validate_threshold(threshold: float) -> float:
    value = float(threshold)
    if not np.isfinite(value) or not -1.0 < value < 1.0:
        raise ValueError(f"threshold must be a finite similarity in (-1, 1), got {threshold!r}")
    return value


def near_duplicate_pairs(
    vectors: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
) -> NearDuplicatePairs:
    """Every pair of stored vectors with similarity strictly above ``threshold``, exactly (see the module doc)."""
    threshold = _validate_threshold(threshold)
    started = time.perf_counter()
    stored = as_stored(vectors)
    n, dim = stored.shape
    backend = select_backend(screen, dim, device)
    block = int(block or default_block(backend.device))
    screened = screen_copy(stored, backend)
    norm = max_norm(stored)
    margin = screening_margin(backend, dim, norm, norm)
    low, high = float32_at_most(threshold - margin), float32_at_least(threshold + margin)
    prepare_seconds = time.perf_counter() - started
    found_rows, found_cols = [], []
    band_pairs = 0
    gram_seconds = extract_seconds = recheck_seconds = 0.0
    sync = backend.device.startswith("cuda")
    with strict_matmul(), torch.inference_mode():
        for i0, i1, j0, j1 in upper_blocks(n, block):
            t0 = time.perf_counter()
            left = screened[i0:i1]
            gram = backend.gram(left, left if i0 == j0 else screened[j0:j1])
            if sync:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            with serial_on_cpu(backend.device):
                rows, cols, sure = threshold_candidates(gram, low, high, diagonal=i0 == j0)
            t2 = time.perf_counter()
            gram_seconds += t1 - t0
            extract_seconds += t2 - t1
            if len(rows) == 0:
                continue
            rows += i0
            cols += j0
            if not sure.all():
                band = ~sure
                band_pairs += int(band.sum())
                sure[band] = pair_similarity(stored, stored, rows[band], cols[band]) > threshold
                rows, cols = rows[sure], cols[sure]
            found_rows.append(rows)
            found_cols.append(cols)
            recheck_seconds += time.perf_counter() - t2
    rows = np.concatenate(found_rows) if found_rows else np.zeros(0, np.int64)
    cols = np.concatenate(found_cols) if found_cols else np.zeros(0, np.int64)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order].astype(np.int64), cols[order].astype(np.int64)
    similarity = pair_similarity(stored, stored, rows, cols)
    knife = float64_bound(dim) * max(1.0, norm) ** 2
    stats = {
        "screen": backend.name,
        "device": backend.device,
        "block": block,
        "margin": margin,
        "threshold": threshold,
        "pairs_screened": n * (n - 1) // 2,
        "band_pairs": band_pairs,
        "pairs": len(rows),
        "knife_edge_pairs": int((np.abs(similarity - threshold) <= knife).sum()),
        "seconds": {
            "prepare": prepare_seconds,
            "gram": gram_seconds,
            "extract": extract_seconds,
            "recheck": recheck_seconds,
            "total": time.perf_counter() - started,
        },
    }
    return NearDuplicatePairs(rows, cols, similarity, threshold, stats)


@dataclass
class NearDuplicates:
    """The pairs, each image's group (``-1``: in none), which images are kept, and the counts."""

    pairs: NearDuplicatePairs
    group: np.ndarray
    keep: np.ndarray
    kept_of_group: np.ndarray

    @property
    def groups(self) -> int:
        return len(self.kept_of_group)

    def counts(self) -> dict[str, int]:
        """Images, pairs, groups, images in groups, removed and kept: for asset metadata."""
        return {
            "images": len(self.keep),
            "pairs": len(self.pairs),
            "groups": self.groups,
            "images_in_groups": int((self.group >= 0).sum()),
            "removed": int((~self.keep).sum()),
            "kept": int(self.keep.sum()),
        }


def _ranks(values: Sequence[Any]) -> np.ndarray:
    """Dense ranks of strings (None sorts first as '')."""
    _, inverse = np.unique(
        np.array(["" if v is None else str(v) for v in values], dtype=object), return_inverse=True
    )
    return inverse.astype(np.int64)


def group_and_keep(
    pairs: NearDuplicatePairs,
    n: int,
    *,
    widths: np.ndarray | None = None,
    heights: np.ndarray | None = None,
    keys: Sequence[Any] | None = None,
    sources: Sequence[Any] | None = None,
) -> NearDuplicates:
    """Connected groups of ``pairs`` over ``n`` images and the one kept per group by :data:`KEEP_RULE`.

    Groups are numbered in the order of their smallest row."""
    sets = UnionFind(n)
    sets.union(pairs.rows, pairs.cols)
    sets.compress()
    roots = sets.find(np.arange(n, dtype=np.int64))
    members = np.bincount(roots, minlength=n)[roots] >= 2
    group = np.full(n, -1, np.int64)
    if members.any():
        _, group[members] = np.unique(roots[members], return_inverse=True)
    area = np.zeros(n, np.int64)
    if widths is not None and heights is not None:
        area = np.asarray(widths, np.int64) * np.asarray(heights, np.int64)
    key_rank = _ranks(keys) if keys is not None else np.zeros(n, np.int64)
    source_rank = _ranks(sources) if sources is not None else np.zeros(n, np.int64)
    rows = np.flatnonzero(members)
    order = np.lexsort((rows, source_rank[rows], key_rank[rows], -area[rows], group[rows]))
    ordered = rows[order]
    first = np.ones(len(ordered), bool)
    first[1:] = group[ordered][1:] != group[ordered][:-1]
    kept_of_group = ordered[first]
    keep = ~members
    keep[kept_of_group] = True
    return NearDuplicates(pairs, group, keep, kept_of_group)


def near_duplicates(
    embeddings: ClipEmbeddings | Sequence[ClipEmbeddings],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    names: Sequence[str] | None = None,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
) -> tuple[NearDuplicates, ClipEmbeddings]:
    """Near-duplicates of one embedding set, or of several of ONE space together (refused, naming both
    spaces, otherwise; ``names`` label their rows' ``source``). Returns the result and the (combined) set."""
    if isinstance(embeddings, ClipEmbeddings):
        data = embeddings
        sources = None
    else:
        data = combine(list(embeddings), names)
        sources = data.metadata.column("source").to_pylist()
    meta = data.metadata
    pairs = near_duplicate_pairs(data.vectors, threshold, screen=screen, block=block, device=device)
    result = group_and_keep(
        pairs,
        len(data),
        widths=_column(meta, "width"),
        heights=_column(meta, "height"),
        keys=meta.column("image_path").to_pylist(),
        sources=sources,
    )
    return result, data


def _column(table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    return table.column(name).fill_null(0).to_numpy(zero_copy_only=False)


def _identity(meta: pa.Table, rows: np.ndarray) -> dict[str, pa.Array]:
    picked = meta.take(pa.array(rows, pa.int64()))
    columns = {"row": pa.array(rows, pa.int64())}
    for name in ("source", "image_path", "SAMPLE_ID", "width", "height"):
        if name in picked.column_names:
            columns[name] = picked.column(name)
    return columns


def keep_table(result: NearDuplicates, data: ClipEmbeddings) -> pa.Table:
    """The keep-list: one row per kept image (row, source, image_path, SAMPLE_ID, width, height), in row order."""
    return pa.table(_identity(data.metadata, np.flatnonzero(result.keep)))


def groups_table(result: NearDuplicates, data: ClipEmbeddings) -> pa.Table:
    """One row per image in a group: group, kept, its similarity to the group's kept image, and identity."""
    rows = np.flatnonzero(result.group >= 0)
    rows = rows[np.lexsort((rows, result.group[rows]))]
    kept_row = result.kept_of_group[result.group[rows]]
    similarity = pair_similarity(data.vectors, data.vectors, rows, kept_row)
    columns = {
        "group": pa.array(result.group[rows], pa.int64()),
        "kept": pa.array(result.keep[rows], pa.bool_()),
        "kept_row": pa.array(kept_row, pa.int64()),
        "similarity_to_kept": pa.array(similarity, pa.float64()),
    }
    return pa.table({**columns, **_identity(data.metadata, rows)})


def pairs_table(result: NearDuplicates, data: ClipEmbeddings) -> pa.Table:
    """Every near-duplicate pair: both rows, their keys and the float64 similarity."""
    pairs = result.pairs
    keys = data.metadata.column("image_path")
    return pa.table(
        {
            "row_a": pa.array(pairs.rows, pa.int64()),
            "row_b": pa.array(pairs.cols, pa.int64()),
            "image_path_a": keys.take(pa.array(pairs.rows, pa.int64())),
            "image_path_b": keys.take(pa.array(pairs.cols, pa.int64())),
            "similarity": pa.array(pairs.similarity, pa.float64()),
        }
    )


def count_near_duplicates(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD, **options: Any) -> int:
    """How many pairs of ``vectors`` exceed ``threshold`` (0 for a correctly de-duplicated keep-list): the
    blocking check's measure, by the same exact pair finder."""
    return len(near_duplicate_pairs(vectors, threshold, **options))
