"""dbscan_cosine gives scikit-learn's float64 DBSCAN labels exactly, on every screen and block size."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN
from sklearn.preprocessing import normalize

from facelake.clusters.dbscan import (
    DbscanResult,
    dbscan_cosine,
    identity_centroids,
    screening_margin,
    unit_norms,
)
from facelake.clusters.identity_clusters import cluster_identities
from facelake.vectors.gram import select_backend
from synthetic.identities import synthetic_identities

SCREENS = ("numpy-float32", "torch-float32", "torch-bfloat16")


def sklearn_dbscan(vectors: np.ndarray, eps: float, min_samples: int) -> DBSCAN:
    return DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit(
        np.asarray(vectors, dtype=np.float64)
    )


def assert_same_as_sklearn(vectors: np.ndarray, eps: float, min_samples: int, blocks=(7, 64)) -> DbscanResult:
    """Every screen and block gives sklearn's labels and core set; returns the last result."""
    reference = sklearn_dbscan(vectors, eps, min_samples)
    result = None
    for screen, block in itertools.product(SCREENS, blocks):
        result = dbscan_cosine(vectors, eps, min_samples, screen=screen, block=block)
        where = f"screen={screen} block={block} eps={eps} min_samples={min_samples}"
        assert result.labels.dtype == np.int64 and result.core.dtype == bool, where
        np.testing.assert_array_equal(result.labels, reference.labels_, err_msg=where)
        np.testing.assert_array_equal(
            np.flatnonzero(result.core), reference.core_sample_indices_, err_msg=where
        )
        assert result.stats["screen"] == screen and result.stats["block"] == block
        assert result.stats["pending_max"] <= result.stats["pending_bound"] or min_samples <= 2, where
    return result


def plane_points(angles: np.ndarray, dim: int = 8) -> np.ndarray:
    """Unit vectors at the given angles on a great circle (the first two coordinates) of the d-sphere."""
    points = np.zeros((len(angles), dim))
    points[:, 0], points[:, 1] = np.cos(angles), np.sin(angles)
    return points


@pytest.mark.parametrize(
    ("dim", "eps", "min_samples", "intra"),
    [(64, 0.35, 2, 0.8), (64, 0.2, 3, 0.8), (128, 0.5, 5, 0.7), (512, 0.35, 2, 0.8), (96, 0.3, 4, 0.72)],
)
def test_synthetic_identities_match_sklearn(dim, eps, min_samples, intra):
    data = synthetic_identities(
        1200, dim, samples=(1, 8), intra=intra, noise_fraction=0.1, seed=dim + min_samples
    )
    result = assert_same_as_sklearn(data.vectors, eps, min_samples, blocks=(64, 500))
    assert 20 < result.n_clusters < 1200 and (result.labels == -1).any()
    assert result.stats["edges"] > 0 and result.stats["pairs_screened"] == 1200 * 1199 // 2


def test_small_synthetic_with_tiny_blocks_and_band_pairs():
    """d=24 makes ragged clusters: many pairs near eps, re-checked in float64, across 7-row blocks."""
    data = synthetic_identities(180, 24, samples=(2, 8), intra=0.72, noise_fraction=0.05, seed=3)
    for eps, min_samples in [(0.35, 2), (0.25, 3), (0.3, 5)]:
        result = assert_same_as_sklearn(data.vectors, eps, min_samples)
        assert result.stats["band_pairs"] > 0  # the bfloat16 screen (last) leaves pairs to re-check


def test_three_thousand_centres_default_screen():
    data = synthetic_identities(6400, 64, samples=(1, 3), noise_fraction=0.05, seed=11)
    assert data.identities >= 2950
    reference = sklearn_dbscan(data.vectors, 0.35, 2)
    result = dbscan_cosine(data.vectors, 0.35, 2)
    np.testing.assert_array_equal(result.labels, reference.labels_)
    np.testing.assert_array_equal(np.flatnonzero(result.core), reference.core_sample_indices_)


def test_chains_link_across_blocks():
    """Two great-circle chains spaced just under eps: only consecutive points link; the ends are border points."""
    rng = np.random.default_rng(0)
    eps = 0.02
    step = np.arccos(1.0 - eps) * 0.999
    first = plane_points(np.arange(30) * step, dim=64)
    second = np.roll(plane_points(np.arange(20) * step + 1.0, dim=64), 2, axis=1)  # another plane
    noise = normalize(rng.standard_normal((60, 64)))
    order = rng.permutation(110)
    vectors = np.concatenate([first, second, noise])[order]
    chain = np.concatenate([np.zeros(30, int), np.ones(20, int), np.full(60, -1)])[order]
    for min_samples, non_core in [(2, 0), (3, 4)]:
        result = assert_same_as_sklearn(vectors, eps, min_samples)
        assert sorted(np.bincount(result.labels[result.labels >= 0]).tolist()) == [20, 30]
        assert (result.labels[chain == -1] == -1).all() and (~result.core[chain >= 0]).sum() == non_core
        assert result.stats["band_pairs"] >= 48  # every link lies within the bfloat16 margin of eps


def test_exact_duplicates():
    rng = np.random.default_rng(1)
    base = normalize(rng.standard_normal((30, 32)))
    vectors = np.concatenate([base, base[:10], base[:5] * 3.0, base[:3]])[rng.permutation(48)]
    for eps, min_samples in [(1e-9, 2), (1e-9, 3), (0.35, 4)]:
        result = assert_same_as_sklearn(vectors, eps, min_samples)
    assert result.n_clusters >= 1


@pytest.mark.parametrize("b_first", [False, True])
def test_border_point_between_two_clusters_takes_smallest_label(b_first):
    """p is a neighbour of one core point of each of two clusters and is not core itself (count 3 < 4)."""
    cluster_a = plane_points(np.array([-0.4, -0.3, -0.2, -0.1, 0.0]))
    cluster_b = plane_points(np.array([0.88, 0.98, 1.08, 1.18, 1.28]))
    border = plane_points(np.array([0.44]))
    groups = [cluster_b, cluster_a] if b_first else [cluster_a, cluster_b]
    vectors = np.concatenate([border, *groups])
    eps = 1.0 - np.cos(0.451)
    result = assert_same_as_sklearn(vectors, eps, 4)
    assert not result.core[0] and result.labels[0] == 0 and result.n_clusters == 2
    first_group = slice(1, 6)
    assert (result.labels[first_group] == 0).all() and (result.labels[6:] == 1).all()


def test_ties_at_exactly_eps_on_half_coordinates():
    """±½ in d=4: dots are exactly 1, ½, 0, −½, −1, so distance ½ = eps is a tie that must count as a neighbour."""
    signs = np.array(list(itertools.product((-0.5, 0.5), repeat=4)))
    rng = np.random.default_rng(2)
    subset = np.concatenate([signs[rng.choice(16, 11, replace=False)], signs[:2]])
    for eps, min_samples in [(0.5, 2), (0.5, 3), (0.5, 4), (0.5, 5), (0.5 - 1e-12, 2), (1.0, 6)]:
        result = assert_same_as_sklearn(subset, eps, min_samples)
    full = dbscan_cosine(signs, 0.5, 5, screen="torch-bfloat16", block=3)
    assert full.core.all() and full.n_clusters == 1  # self + 4 neighbours at exactly eps
    assert full.stats["knife_edge_pairs"] == 32 and full.stats["band_pairs"] >= 32
    assert (dbscan_cosine(signs, 0.5 - 1e-9, 2).labels == -1).all()
    assert result.n_clusters >= 1


def test_ties_at_exactly_eps_on_quarter_coordinates():
    """±¼ in d=16 (given as integers ±1: the norm 4 divides exactly): ties at eps ½ (4 flips) and ⅜ (3 flips)."""
    rng = np.random.default_rng(3)
    codes = rng.choice(1 << 16, 220, replace=False)
    vectors = ((codes[:, None] >> np.arange(16)) & 1) * 2 - 1
    for eps, min_samples in [(0.5, 5), (0.5, 12), (0.375, 3), (0.375, 6)]:
        result = assert_same_as_sklearn(vectors, eps, min_samples, blocks=(11, 64))
        assert result.stats["knife_edge_pairs"] > 0


def test_eps_larger_than_everything_min_samples_one_and_all_noise():
    rng = np.random.default_rng(4)
    vectors = normalize(rng.standard_normal((150, 48)))
    vectors[:5] = -vectors[5:10]  # antipodal pairs: distance exactly 2 after clipping
    whole = assert_same_as_sklearn(vectors, 2.0, 3)
    assert whole.n_clusters == 1 and (whole.labels == 0).all()
    singles = assert_same_as_sklearn(vectors, 0.05, 1)
    assert singles.core.all() and (singles.labels >= 0).all() and singles.n_clusters == 150
    noise = assert_same_as_sklearn(vectors, 0.05, 2)
    assert (noise.labels == -1).all() and not noise.core.any() and noise.n_clusters == 0


def test_antipodal_pair_is_within_eps_two_after_clipping():
    """x̂·x̂ rounds above 1 for some x, so 1 − x̂·(−x̂) exceeds 2 until sklearn clips it to 2 <= eps."""
    rng = np.random.default_rng(0)
    while True:
        v = rng.standard_normal(8)
        unit = v / unit_norms(v[None])[0]
        if 1.0 + np.einsum("i,i->", unit, unit) > 2.0:
            break
    result = assert_same_as_sklearn(np.stack([v, -v]), 2.0, 2, blocks=(1, 2))
    assert result.labels.tolist() == [0, 0]


def test_single_row():
    result = dbscan_cosine(np.array([[1.0, 2.0]]), 0.3, 1, screen="numpy-float32")
    assert result.labels.tolist() == [0] and result.identity.tolist() == [0]
    assert dbscan_cosine(np.array([[1.0, 2.0]]), 0.3, 2).labels.tolist() == [-1]


def test_identity_cluster_size_and_centroids():
    result = DbscanResult(
        labels=np.array([1, -1, 0, 1, -1, 0, 0]), core=np.ones(7, dtype=bool), eps=0.3, min_samples=2
    )
    assert result.n_clusters == 2
    assert result.identity.tolist() == [1, 2, 0, 1, 3, 0, 0]
    assert result.cluster_size.tolist() == [2, 1, 3, 2, 1, 3, 3]
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((7, 6)) * rng.uniform(0.5, 3.0, (7, 1))
    centroids = identity_centroids(vectors, result.identity)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.stack([unit[result.identity == k].mean(axis=0) for k in range(4)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert centroids.dtype == np.float32 and centroids.shape == (4, 6)
    np.testing.assert_allclose(centroids, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(centroids[2], unit[1], atol=1e-6)  # a singleton's centroid is itself
    with pytest.raises(ValueError, match="none missing"):
        identity_centroids(vectors, np.array([0, 0, 2, 2, 3, 3, 3]))
    with pytest.raises(ValueError, match=">= 0"):
        identity_centroids(vectors, result.labels)


def test_identity_end_to_end():
    data = synthetic_identities(400, 64, samples=(1, 6), noise_fraction=0.1, seed=6)
    result = dbscan_cosine(data.vectors, 0.35, 2)
    identity, noise = result.identity, result.labels == -1
    assert identity[~noise].max() == result.n_clusters - 1
    assert identity[noise].tolist() == list(range(result.n_clusters, result.n_clusters + int(noise.sum())))
    assert (result.cluster_size[noise] == 1).all() and (result.cluster_size[~noise] >= 2).all()
    centroids = identity_centroids(data.vectors, identity)
    assert centroids.shape == (identity.max() + 1, 64)
    own = np.einsum("ij,ij->i", normalize(data.vectors), centroids[identity])
    assert own.min() > 0.6  # every point is close to its own identity's centroid
    np.testing.assert_allclose(own[noise], 1.0, atol=1e-6)  # a singleton is its own centroid


@pytest.mark.parametrize("bad", ["zero", "nan", "inf"])
def test_invalid_rows_are_named(bad):
    vectors = np.random.default_rng(7).standard_normal((20, 8))
    value = {"zero": 0.0, "nan": np.nan, "inf": np.inf}[bad]
    vectors[[3, 17]] = 0.0 if bad == "zero" else vectors[[3, 17]]
    if bad != "zero":
        vectors[3, 2] = vectors[17, 5] = value
    with pytest.raises(ValueError, match=r"2 row\(s\): 3, 17"):
        dbscan_cosine(vectors, 0.3, 2)
    with pytest.raises(ValueError, match="3, 17"):
        identity_centroids(vectors, np.arange(20))


def test_rows_too_small_or_large_to_normalise_are_named():
    vectors = np.random.default_rng(8).standard_normal((6, 4))
    vectors[1] *= 1e-160
    vectors[4] *= 1e160
    with pytest.raises(ValueError, match=r"subnormal or overflowing squared norm in 2 row\(s\): 1, 4"):
        dbscan_cosine(vectors, 0.3, 2)


def test_invalid_parameters():
    vectors = np.eye(3)
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            dbscan_cosine(vectors, eps, 2)
    for min_samples in (0, -2, 1.5):
        with pytest.raises(ValueError, match="min_samples"):
            dbscan_cosine(vectors, 0.3, min_samples)
    with pytest.raises(ValueError, match="2-d"):
        dbscan_cosine(np.ones(4), 0.3, 2)
    with pytest.raises(ValueError, match="unknown Gram screen"):
        dbscan_cosine(vectors, 0.3, 2, screen="float8")


def test_pending_buffer_stays_bounded_on_a_dense_cluster():
    """600 points all within eps of each other: ~180k edges, but the buffer holds at most N·(min_samples−2) = 58.8k."""
    data = synthetic_identities(600, 64, samples=(600, 600), intra=0.95, seed=8)
    for screen in SCREENS:
        result = dbscan_cosine(data.vectors, 0.35, 100, screen=screen, block=64)
        stats = result.stats
        assert stats["edges"] == 600 * 599 // 2 and result.n_clusters == 1 and result.core.all()
        assert (
            stats["pending_bound"] == 600 * 98 < stats["edges"]
            and 0 < stats["pending_max"] <= stats["pending_bound"]
        )
        assert stats["core_core_edges"] == stats["edges"]


def test_unit_rows_are_bitwise_sklearns_normalize():
    rng = np.random.default_rng(9)
    for dim in (3, 17, 512):
        vectors = rng.standard_normal((257, dim)) * rng.uniform(0.01, 100.0, (257, 1))
        for chunk in (1, 10, 1000):
            unit = vectors / unit_norms(vectors, chunk=chunk)[:, None]
            np.testing.assert_array_equal(unit, normalize(vectors))


@pytest.mark.parametrize("screen", SCREENS)
def test_screening_error_stays_within_margin(screen):
    """The bound the screen relies on holds: |screened Gram − float64 dot| <= margin, and the margin is small."""
    rng = np.random.default_rng(10)
    dim = 256
    base = normalize(rng.standard_normal((200, dim)))
    near = normalize(base + 0.05 * rng.standard_normal((200, dim)))
    unit = np.concatenate([base, near, -base[:50]])
    backend = select_backend(screen, dim, "cpu")
    screened = backend.prepare(torch.from_numpy(unit.astype(np.float32)))
    gram = backend.gram(screened, screened).double().numpy()
    margin = screening_margin(backend, dim)
    error = np.abs(gram - unit @ unit.T).max()
    assert error <= margin < (0.02 if screen == "torch-bfloat16" else 1e-4)
    assert error > margin / 1000  # the bound is not absurdly loose


PROGRESS_LINE = re.compile(
    r"^(nearest-neighbour scan|DBSCAN scan): ([\d,]+)/([\d,]+) pairs \([\d.]+%\), .* ETA "
)


def test_both_block_scans_report_progress_to_the_end():
    """cluster_identities reports its two block scans (nearest neighbours, then DBSCAN) through the callback:
    done/total pairs, rate and ETA at least every 5 % of the pairs, the last line at done == total."""
    n, block = 300, 16
    data = synthetic_identities(n, 32, samples=(1, 6), noise_fraction=0.1, seed=5)
    space = {"embedder_name": "synthetic", "embedder_same_identity_cosine_distance": 0.35}
    lines: list[str] = []
    clusters = cluster_identities(
        data.vectors, space, eps_source="fixed", eps=0.35, block=block, progress=lines.append
    )
    assert clusters.dbscan.labels.shape == (n,)
    total = n * (n - 1) // 2
    parsed = [PROGRESS_LINE.match(line) for line in lines]
    assert all(parsed), lines
    for scan in ("nearest-neighbour scan", "DBSCAN scan"):
        done = [int(m.group(2).replace(",", "")) for m in parsed if m.group(1) == scan]
        totals = {int(m.group(3).replace(",", "")) for m in parsed if m.group(1) == scan}
        assert totals == {total}, scan
        assert done[-1] == total, f"{scan} ended at {done[-1]} of {total}"
        steps = np.diff([0, *done])
        assert (steps > 0).all() and steps.max() <= 0.05 * total + block * block, (scan, steps)
    scans = [m.group(1) for m in parsed]
    assert scans[0] == "nearest-neighbour scan" and scans[-1] == "DBSCAN scan"


def test_a_two_row_scan_reports_its_one_pair_once():
    lines: list[str] = []
    result = dbscan_cosine(np.eye(2, 4), 0.5, 2, progress=lines.append)
    assert result.labels.tolist() == [-1, -1]
    assert len(lines) == 1 and lines[0].startswith("DBSCAN scan: 1/1 pairs (100.0%), "), lines
