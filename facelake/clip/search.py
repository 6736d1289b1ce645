"""Text and image search over stored CLIP embeddings: exact top-k by blocked products, a faiss index above a
size threshold, and the Python API that ties them to an encoder and to the metadata rows.

Exact top-k (:class:`ExactSearch`): the stored float16 vectors are kept once in the fastest measured
screening precision (:func:`facelake.vectors.gram.select_backend`). Each block of stored rows is multiplied by
the queries, the running top-k per query is merged, and every entry within ``2·margin`` of the running k-th
value is kept as a candidate (``margin`` bounds the screening error: :func:`facelake.clip.similarity.screening_margin`).
The true top-k by the one similarity (:mod:`facelake.clip.similarity`) always lies among the candidates
that clear the FINAL k-th value minus ``2·margin``; those are re-scored in float64 and the k best kept
(ties → the smaller row). So the result is exact, whatever the screening precision.

Above :data:`ANN_THRESHOLD` rows, :class:`ClipSearch` uses an approximate index when one is given
(:mod:`facelake.clip.ann`), and re-scores its hits with the same float64 similarity.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from facelake.clip.layout import ClipEmbeddings
from facelake.clip.similarity import as_stored, max_norm, pair_similarity, screen_copy, screening_margin
from facelake.vectors.gram import default_device, select_backend, strict_matmul
from facelake.vectors.spaces import EmbedderProfile, check_same_space

ANN_THRESHOLD = 1_000_000
"""Rows above which :class:`ClipSearch` prefers an approximate index (when it has one)."""
DEFAULT_BLOCK = 1 << 16
_QUERY_CHUNK = 1024


@dataclass
class Hits:
    """Top-k per query: row indices int64 ``[q, k]`` and float64 similarities, best first (ties → smaller row)."""

    index: np.ndarray
    score: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def rank_hits(q: np.ndarray, rows: np.ndarray, score: np.ndarray, queries: int, k: int) -> Hits:
    """The ``k`` best (query ``q[i]``, stored row ``rows[i]``, ``score[i]``) per query, best first, ties →
    smaller row; missing places are row -1, score −inf."""
    order = np.lexsort((rows, -score, q))
    q, rows, score = q[order], rows[order], score[order]
    starts = np.searchsorted(q, np.arange(queries))
    rank = np.arange(len(q)) - starts[q]
    keep = rank < k
    index = np.full((queries, k), -1, np.int64)
    scores = np.full((queries, k), -np.inf)
    index[q[keep], rank[keep]] = rows[keep]
    scores[q[keep], rank[keep]] = score[keep]
    return Hits(index, scores)


class ExactSearch:
    """Exact top-k by the one similarity over stored float16 vectors (see the module doc)."""

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        screen: str = "auto",
        block: int | None = None,
        device: str | None = None,
    ) -> None:
        self.vectors = as_stored(vectors)
        if self.vectors.ndim != 2 or len(self.vectors) == 0:
            raise ValueError(f"need a non-empty [N, d] set of stored vectors, got {self.vectors.shape}")
        self.dim = self.vectors.shape[1]
        self.backend = select_backend(screen, self.dim, device or default_device())
        self.block = int(block or DEFAULT_BLOCK)
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        started = time.perf_counter()
        self.screened = screen_copy(self.vectors, self.backend)
        self.norm = max_norm(self.vectors)
        self.prepare_seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int = 10) -> Hits:
        """The exact top-``k`` stored rows of each query (float16, or unit vectors rounded to float16)."""
        stored = as_stored(queries)
        if stored.shape[1] != self.dim:
            raise ValueError(f"queries are {stored.shape[1]}-d but the stored vectors are {self.dim}-d")
        k = min(int(k), len(self))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        margin = screening_margin(self.backend, self.dim, max_norm(stored), self.norm)
        parts, candidates = [], 0
        for start in range(0, len(stored), _QUERY_CHUNK):
            hits = self._search_chunk(stored[start : start + _QUERY_CHUNK], k, margin)
            candidates += hits.stats["candidates"]
            parts.append(hits)
        stats = {"screen": self.backend.name, "margin": margin, "candidates": candidates, "block": self.block}
        return Hits(np.concatenate([p.index for p in parts]), np.concatenate([p.score for p in parts]), stats)

    def _search_chunk(self, stored: np.ndarray, k: int, margin: float) -> Hits:
        backend, n, q = self.backend, len(self), len(stored)
        queries = screen_copy(stored, backend)
        top = torch.full((q, k), float("-inf"), device=queries.device)
        rows_found, cols_found, values_found = [], [], []
        with strict_matmul(), torch.inference_mode():
            for j0 in range(0, n, self.block):
                j1 = min(j0 + self.block, n)
                gram = backend.gram(queries, self.screened[j0:j1])
                best = gram.topk(min(k, j1 - j0), dim=1).values
                top = torch.cat([top, best], dim=1).topk(k, dim=1).values
                floor = top[:, -1] - 2.0 * margin
                r, c = torch.nonzero(gram >= floor[:, None], as_tuple=True)
                rows_found.append(r.cpu())
                cols_found.append((c + j0).cpu())
                values_found.append(gram[r, c].cpu())
        rows, cols, values = torch.cat(rows_found), torch.cat(cols_found), torch.cat(values_found)
        keep = values >= (top[:, -1].cpu() - 2.0 * margin)[rows]
        rows, cols = rows[keep].numpy(), cols[keep].numpy()
        exact = pair_similarity(stored, self.vectors, rows, cols)
        hits = rank_hits(rows, cols, exact, q, k)
        hits.stats["candidates"] = len(rows)
        return hits


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int = 10, **options: Any) -> Hits:
    """One-off :meth:`ExactSearch.search` (``options``: ``screen``, ``block``, ``device``)."""
    return ExactSearch(vectors, **options).search(queries, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found ∩ truth| / k`` (rows of row indices, ``-1`` = nothing)."""
    k = truth.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found[:, :k], truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


class ClipSearch:
    """Search one embedding set by text, image or vector; results as a table with the metadata of each hit.

    ``encoder`` (for text and image queries) must embed in the set's space, else
    :class:`facelake.vectors.spaces.EmbeddingSpaceMismatchError` names both. ``ann``: an index built over
    the same vectors (:func:`facelake.clip.ann.build_ann`), used above ``exact_limit`` rows.
    """

    def __init__(
        self,
        embeddings: ClipEmbeddings,
        encoder: Any | None = None,
        *,
        ann: Any | None = None,
        exact_limit: int = ANN_THRESHOLD,
        screen: str = "auto",
        block: int | None = None,
        device: str | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.space = embeddings.space
        if encoder is not None:
            check_same_space([self.space, encoder.profile])
        if ann is not None:
            check_same_space([self.space, ann.space])
            if ann.rows != len(embeddings):
                raise ValueError(f"the index holds {ann.rows} rows but the embeddings {len(embeddings)}")
        self.encoder = encoder
        self.ann = ann
        self.method = "ann" if ann is not None and len(embeddings) > exact_limit else "exact"
        self._exact = (
            None
            if self.method == "ann"
            else ExactSearch(embeddings.vectors, screen=screen, block=block, device=device)
        )

    @property
    def profile(self) -> EmbedderProfile:
        return EmbedderProfile.from_provenance(self.space)

    def _require_encoder(self) -> Any:
        if self.encoder is None:
            raise ValueError("text and image queries need an encoder of the embeddings' space")
        return self.encoder

    def vectors(self, queries: np.ndarray, k: int = 10) -> Hits:
        """Top-k hits of query vectors (unit float32, or stored float16)."""
        if self.method == "ann":
            return self.ann.search(self.embeddings.vectors, queries, k)
        return self._exact.search(queries, k)

    def text(self, texts: str | Sequence[str], k: int = 10) -> pa.Table:
        """Hits of text queries as a table (see :meth:`table`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        vectors = self._require_encoder().encode_text(texts)
        return self.table(self.vectors(vectors, k), texts)

    def image(self, images: Sequence[Any], k: int = 10, labels: Sequence[str] | None = None) -> pa.Table:
        """Hits of image queries (bytes, paths, arrays or PIL images) as a table."""
        vectors = self._require_encoder().encode_images(list(images))
        names = list(labels) if labels is not None else [f"image {i}" for i in range(len(images))]
        return self.table(self.vectors(vectors, k), names)

    def table(self, hits: Hits, queries: Sequence[str]) -> pa.Table:
        """One row per hit: query, rank (1-based), score (float64), row, and the hit's metadata columns."""
        q, rank = np.nonzero(hits.index >= 0)
        rows = hits.index[q, rank]
        meta = self.embeddings.metadata.take(pa.array(rows))
        keep = [c for c in meta.column_names if not c.startswith("embedder_")]
        data = {
            "query": pa.array([queries[i] for i in q], pa.string()),
            "rank": pa.array(rank + 1, pa.int32()),
            "score": pa.array(hits.score[q, rank], pa.float64()),
            "row": pa.array(rows, pa.int64()),
            "method": pa.array([self.method] * len(rows), pa.string()),
        }
        for name in keep:
            data[name] = meta.column(name)
        return pa.table(data)
