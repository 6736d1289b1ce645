"""The exact cross-pair search of the leakage audit, against a brute-force float64 reference: the same top-K
pairs (ties: smaller query, then smaller base row) and the same pairs at or above the threshold, whatever the
screen and the block size; and the leakage audit's refusal of real sets from another embedding space."""

from __future__ import annotations

import numpy as np
import pytest

from facelake.curation.leakage import EmbeddingSet, find_leaks
from facelake.curation.pair_search import cross_pairs
from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError, embedding_table
from facelake.lake.progress import Progress


def clustered(n: int, dim: int, seed: int, clusters: int = 20, noise: float = 0.7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((clusters, dim))
    points = centers[rng.integers(0, clusters, n)] / np.sqrt(dim) + noise * rng.standard_normal(
        (n, dim)
    ) / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force(q: np.ndarray, b: np.ndarray, k: int, threshold: float | None) -> tuple[list, set]:
    full = q.astype(np.float64) @ b.astype(np.float64).T
    rows, cols = np.indices(full.shape)
    order = np.lexsort((cols.ravel(), rows.ravel(), -full.ravel()))[:k]
    top = [(int(r), int(c)) for r, c in zip(rows.ravel()[order], cols.ravel()[order], strict=True)]
    above = set() if threshold is None else {(int(r), int(c)) for r, c in np.argwhere(full >= threshold)}
    return top, above


@pytest.mark.parametrize("screen", ["numpy-float32", "torch-float32", "torch-bfloat16"])
@pytest.mark.parametrize("block", [97, 4096])
def test_top_k_and_threshold_pairs_equal_brute_force(screen: str, block: int) -> None:
    q, b = clustered(700, 48, 1), clustered(500, 48, 2)
    threshold = 0.75
    top, above = brute_force(q, b, 50, threshold)
    assert 0 < len(above) < 5000
    progress = Progress("pairs", len(q) * len(b), None, unit="pairs")
    found = cross_pairs(
        q, b, top_k=50, threshold=threshold, screen=screen, block=block, device="cpu", progress=progress
    )
    pairs = list(zip(found.rows.tolist(), found.cols.tolist(), strict=True))
    assert [p for p, t in zip(pairs, found.top, strict=True) if t] == top
    assert {p for p, a in zip(pairs, found.above, strict=True) if a} == above
    assert set(pairs) == set(top) | above and progress.done == len(q) * len(b)
    assert np.all(np.diff(found.cosine) <= 0)  # best first
    exact = np.einsum("ij,ij->i", q[found.rows].astype(np.float64), b[found.cols].astype(np.float64))
    np.testing.assert_allclose(found.cosine, exact, rtol=0, atol=1e-12)


def test_ties_go_to_the_smaller_rows_and_k_larger_than_the_product_returns_everything() -> None:
    q = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    found = cross_pairs(q, b, top_k=3, device="cpu", screen="torch-float32")
    assert list(zip(found.rows.tolist(), found.cols.tolist(), strict=True)) == [(0, 0), (1, 0), (2, 1)]
    everything = cross_pairs(q, b, top_k=100, device="cpu")
    assert len(everything) == 6 and everything.top.all() and not everything.above.any()
    only_threshold = cross_pairs(q, b, top_k=0, threshold=0.7, device="cpu")
    assert sorted(zip(only_threshold.rows.tolist(), only_threshold.cols.tolist(), strict=True)) == [
        (0, 0),
        (1, 0),
        (2, 1),
    ]
    with pytest.raises(ValueError, match="2-d but base is 3-d"):
        cross_pairs(q, np.ones((2, 3), np.float32))


def test_leakage_refuses_a_real_set_from_another_space() -> None:
    dlib = EmbedderProfile("dlib_resnet_v1", 128, "d" * 64, False, 0.092)
    arcface = EmbedderProfile("arcface_onnx", 512, "a" * 64, False, 0.35)
    generated = embedding_table(
        clustered(4, 128, 3), dlib, {"key": ["a", "b", "c", "d"], "identity_id": ["x"] * 4}
    )
    real = EmbeddingSet(
        "celebahq", embedding_table(clustered(3, 512, 4), arcface, {"file_name": ["1", "2", "3"]})
    )
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"dlib_resnet_v1 .*arcface_onnx"):
        find_leaks(generated, [real])
    same = EmbeddingSet(
        "gallery", embedding_table(clustered(3, 128, 5), dlib, {"file_name": ["1", "2", "3"]})
    )
    leakage = find_leaks(generated, [same], top_k=2)
    assert leakage.pairs.num_rows == 2 and set(leakage.pairs["real_key"].to_pylist()) <= {"1", "2", "3"}
    assert leakage.summary["real_sets"]["gallery"]["top_k"] == 2 and leakage.pairs["rank"].to_pylist() == [
        1,
        2,
    ]
