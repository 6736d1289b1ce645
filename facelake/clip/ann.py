"""An approximate nearest-neighbour index (faiss IVF-Flat, inner product) over stored CLIP embeddings, with its
parameters chosen by measurement and its recall@10 against exact search recorded.

:func:`build_ann` trains the coarse quantiser (spherical k-means, faiss's default for inner product;
``nlist`` ≈ 8·√N lists, on at most ``TRAIN_PER_LIST × nlist`` sampled rows), adds every row, then measures
recall@10 of probe queries against :class:`facelake.clip.search.ExactSearch` for ``nprobe`` = 1, 2, 4, …
and keeps the smallest whose recall less two standard errors reaches ``recall_target``. Probe queries
default to a sample of the stored rows, each searched with itself removed from both answers (a stored row
trivially finds itself); pass the queries you expect (e.g. encoded prompts) as ``probe_queries`` to tune
for those. The index stores float32 copies of the float16 rows (the same values), and every hit is
re-scored with the one float64 similarity (:mod:`facelake.clip.similarity`), so only the candidate set is
approximate, never a score.

Text queries. CLIP text embeddings share a mean direction away from the images' (the modality gap, Liang
et al. 2022, "Mind the Gap"); it dominates a text query's similarity to the list centroids, so the lists it
picks are close to arbitrary. Given probe queries, the index records their mean as ``query_center`` (in
the params JSON) and subtracts it from each query for the coarse step only; the chosen lists are scanned
with the query itself (``search_preassigned``). Without probe queries nothing is centred. Measured on
``benchmarks/clip.py`` (c), 1M rows, text cone weight 0.85: uncentred, 4·√N lists needed 1024 probes for
recall@10 0.95 (slower than exact search); centred with 8·√N lists, 1 probe gave 0.98 on the probes. An
HNSW graph (``IndexHNSWFlat``, M 16) was rejected: at 300k it reached recall@10 0.76 at efSearch 256 on
these queries, which lie far from every stored row.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facelake.clip.search import ExactSearch, Hits, rank_hits, recall_at_k
from facelake.clip.similarity import as_stored, pair_similarity
from facelake.vectors.spaces import check_same_space

TRAIN_PER_LIST = 40
KMEANS_ITERATIONS = 10
RECALL_TARGET = 0.95
PROBE_QUERIES = 1000
INDEX_FILE = "image.index"
PARAMS_FILE = "image.index.json"
_ADD_CHUNK = 1 << 16


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the approximate index needs faiss: pip install faiss-cpu") from error
    return faiss


@dataclass
class AnnIndex:
    """A trained and filled faiss index, the space of its vectors, and how it was chosen."""

    index: Any
    space: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, vectors: np.ndarray, queries: np.ndarray, k: int = 10, nprobe: int | None = None
    ) -> Hits:
        """Approximate top-``k`` rows of ``vectors`` (the stored rows the index was built from) per query,
        re-scored with the float64 similarity and ranked (ties → smaller row)."""
        stored = as_stored(queries)
        found = self._candidates(np.asarray(stored, np.float32), int(k), int(nprobe or self.params["nprobe"]))
        q, rank = np.nonzero(found >= 0)
        rows = found[q, rank]
        scores = pair_similarity(stored, vectors, q, rows)
        hits = rank_hits(q, rows, scores, len(stored), int(k))
        hits.stats = {"method": "ann", "nprobe": self.index.nprobe}
        return hits

    def _candidates(self, queries: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        """faiss's top-``k`` rows of the float32 ``queries``: lists chosen by the query minus the recorded
        ``query_center`` when there is one (the coarse step only), then scanned with the query itself."""
        self.index.nprobe = nprobe
        center = self.params.get("query_center")
        if center is None:
            return self.index.search(queries, k)[1]
        coarse = (queries.astype(np.float64) - np.asarray(center, np.float64)).astype(np.float32)
        distances, lists = self.index.quantizer.search(coarse, nprobe)
        return self.index.search_preassigned(queries, k, lists, distances)[1]

    def to_bytes(self) -> bytes:
        """The faiss index serialised (faiss's own format: what clip-retrieval writes as ``image.index``)."""
        return _faiss().serialize_index(self.index).tobytes()

    def params_json(self) -> bytes:
        return json.dumps({"space": self.space, **self.params}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, params: bytes) -> AnnIndex:
        content = json.loads(params)
        space = content.pop("space")
        index = _faiss().deserialize_index(np.frombuffer(data, np.uint8))
        return cls(index, space, content)


def default_nlist(rows: int) -> int:
    """≈ 8·√N inverted lists (faiss's guideline for IVF-Flat is 4·√N to 16·√N; at least 1, and at most
    N / TRAIN_PER_LIST so k-means has enough points per list). Coarser lists split clusters of similar
    images across lists and need many more probes for the same recall: at 1M rows in 20k clusters, 4·√N
    lists needed 64 probes for recall@10 0.94 on centred text-like queries, 8·√N lists 1."""
    return max(1, min(round(8 * math.sqrt(rows)), rows // TRAIN_PER_LIST or 1))


def _probe_truth(
    vectors: np.ndarray, probes: np.ndarray | None, count: int, seed: int, k: int, exact: ExactSearch | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(probe queries, exact top-k of each, the stored row each probe is — to drop from both answers)."""
    search = exact or ExactSearch(vectors)
    if probes is not None:
        queries = as_stored(probes)
        return queries, search.search(queries, k).index, None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=min(count, len(vectors)), replace=False))
    truth = search.search(vectors[rows], k + 1).index
    return vectors[rows], _drop(truth, rows, k), rows


def _recall_bound(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """recall@k of the probe queries and its lower bound: mean − 2 standard errors of the per-query recalls
    (a margin for the probe set's sampling error: new queries of the same kind then meet the target with
    high probability, not about half the time)."""
    per_query = np.array([recall_at_k(f[None], t[None]) for f, t in zip(found, truth, strict=True)])
    if not len(per_query):
        return 1.0, 1.0
    spread = float(per_query.std(ddof=1)) / math.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
    return float(per_query.mean()), float(per_query.mean()) - 2 * spread


def _drop(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``found`` without its own index, cut to ``k`` (padded with -1)."""
    out = np.full((len(found), k), -1, np.int64)
    for i, (row, skip) in enumerate(zip(found, own, strict=True)):
        kept = row[(row != skip) & (row >= 0)][:k]
        out[i, : len(kept)] = kept
    return out


def build_ann(
    vectors: np.ndarray,
    space: dict[str, Any],
    *,
    nlist: int | None = None,
    recall_target: float = RECALL_TARGET,
    probe_queries: np.ndarray | None = None,
    probe_count: int = PROBE_QUERIES,
    seed: int = 0,
    threads: int | None = None,
    exact: ExactSearch | None = None,
    center_queries: bool = True,
) -> AnnIndex:
    """An IVF-Flat index over ``vectors`` (stored float16 rows of ``space``), ``nprobe`` chosen by measured
    recall@10 (see the module doc); ``params`` records every choice and the recall curve."""
    faiss = _faiss()
    check_same_space([space])
    stored = as_stored(vectors)
    n, dim = stored.shape
    if threads:
        faiss.omp_set_num_threads(int(threads))
    nlist = int(nlist or default_nlist(n))
    started = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    train_rows = min(n, TRAIN_PER_LIST * nlist)
    sample = np.sort(rng.choice(n, size=train_rows, replace=False))
    index.train(np.asarray(stored[sample], np.float32))
    train_seconds = time.perf_counter() - started
    for start in range(0, n, _ADD_CHUNK):
        index.add(np.asarray(stored[start : start + _ADD_CHUNK], np.float32))
    build_seconds = time.perf_counter() - started
    queries, truth, own = _probe_truth(stored, probe_queries, probe_count, seed, 10, exact)
    centred = center_queries and probe_queries is not None
    center = {"query_center": np.asarray(queries, np.float64).mean(axis=0).tolist()} if centred else {}
    ann = AnnIndex(index, dict(space), dict(center))
    curve: dict[int, float] = {}
    lower: dict[int, float] = {}
    nprobe = 1
    while True:
        hits = ann.search(stored, queries, 11 if own is not None else 10, nprobe=nprobe)
        found = _drop(hits.index, own, 10) if own is not None else hits.index
        curve[nprobe], lower[nprobe] = _recall_bound(found, truth)
        if lower[nprobe] >= recall_target or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    ann.params = {
        "kind": "faiss.IndexIVFFlat",
        "metric": "inner_product",
        "faiss_version": faiss.__version__,
        "rows": n,
        "dimension": dim,
        "nlist": nlist,
        "nprobe": nprobe,
        "train_rows": train_rows,
        "kmeans_iterations": KMEANS_ITERATIONS,
        "seed": seed,
        "recall_target": recall_target,
        "recall_at_10": curve[nprobe],
        "recall_at_10_lower": lower[nprobe],
        "recall_curve": {str(p): r for p, r in curve.items()},
        "probe_queries": len(queries),
        "probe_kind": "given queries" if own is None else "stored rows, self excluded",
        "train_seconds": round(train_seconds, 3),
        "build_seconds": round(build_seconds, 3),
        "coarse_assignment": "query minus query_center" if centred else "query",
        **center,
    }
    if centred:
        ann.params["query_center_norm"] = float(np.linalg.norm(center["query_center"]))
    index.nprobe = nprobe
    return ann


def load_ann(data: bytes, params: bytes) -> AnnIndex:
    """An index saved as :meth:`AnnIndex.to_bytes` + :meth:`AnnIndex.params_json`."""
    return AnnIndex.from_bytes(data, params)
