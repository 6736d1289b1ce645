"""Search: exact top-k by the one similarity whatever the screen and block, text/image queries through the
Python API, contact sheets, and the faiss index's recall against exact search."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facelake.clip.ann import build_ann, load_ann
from facelake.clip.encoder import ClipEncoder
from facelake.clip.layout import ClipEmbeddings, metadata_table, to_float16
from facelake.clip.model import ClipModelSpec, load_clip
from facelake.clip.search import ClipSearch, ExactSearch, recall_at_k
from facelake.clip.sheet import contact_sheet, hit_labels
from facelake.clip.similarity import similarity_matrix
from facelake.vectors.spaces import EmbedderProfile, EmbeddingSpaceMismatchError
from synthetic.clip import (
    TINY_NAME,
    clustered_unit_vectors,
    register_tiny_config,
    text_like_queries,
    textured_jpegs,
)

SCREENS = ("numpy-float32", "torch-float32", "torch-bfloat16")
SPACE = EmbedderProfile("open_clip:test", 64, "a" * 64, True, 0.08, config="{}")


def brute_topk(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 similarities of everything, ranked by (-score, row)."""
    scores = similarity_matrix(queries, base)
    order = np.lexsort((np.broadcast_to(np.arange(base.shape[0]), scores.shape), -scores), axis=-1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def planted(seed: int = 0, n: int = 3000, dim: int = 64, queries: int = 7):
    """Random float16 rows with, per query, three rows at similarity ≈ 0.9 / 0.8 / 0.7, and exact duplicates."""
    rng = np.random.default_rng(seed)
    base = to_float16(rng.standard_normal((n, dim)))
    query = to_float16(rng.standard_normal((queries, dim)))
    rows = rng.choice(n, size=(queries, 3), replace=False)
    for q, targets in enumerate(rows):
        for row, cosine in zip(targets, (0.9, 0.8, 0.7), strict=True):
            noise = rng.standard_normal(dim)
            noise -= noise @ query[q].astype(np.float64) * query[q].astype(np.float64)
            noise /= np.linalg.norm(noise)
            base[row] = to_float16(
                (cosine * query[q].astype(np.float64) + np.sqrt(1 - cosine**2) * noise)[None]
            )[0]
    base[n - 1] = base[rows[0, 0]]  # an exact tie with query 0's best match: the smaller row wins
    return base, query, rows


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("block", [97, None])
def test_exact_topk_finds_planted_matches_and_equals_brute_force(screen, block):
    base, query, rows = planted()
    hits = ExactSearch(base, screen=screen, block=block, device="cpu").search(query, k=10)
    for q, targets in enumerate(rows):
        expected = sorted(targets[:1].tolist() + ([len(base) - 1] if q == 0 else []))
        assert hits.index[q, : len(expected)].tolist() == expected
        start = len(expected)
        assert hits.index[q, start : start + 2].tolist() == targets[1:].tolist()
    index, scores = brute_topk(base, query, 10)
    np.testing.assert_array_equal(hits.index, index)
    np.testing.assert_array_equal(hits.score, scores)
    assert hits.stats["screen"] == screen


def test_exact_search_of_unit_float32_queries_scores_them_as_stored():
    base, query, _ = planted(seed=1)
    float32 = query.astype(np.float32) * np.float32(1.0001)
    hits = ExactSearch(base, screen="torch-bfloat16").search(float32, k=5)
    index, scores = brute_topk(base, to_float16(float32), 5)
    np.testing.assert_array_equal(hits.index, index)
    np.testing.assert_array_equal(hits.score, scores)
    small = ExactSearch(base[:3]).search(query, k=10)
    assert small.index.shape == (7, 3), "k is capped at the number of rows"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    register_tiny_config(tmp_path_factory.mktemp("clip-config"))
    return load_clip(ClipModelSpec(TINY_NAME, seed=0))


@pytest.fixture(scope="module")
def indexed(tiny):
    images = textured_jpegs(30, size=(48, 40), seed=11)
    encoder = ClipEncoder(tiny, device="cpu")
    vectors = to_float16(encoder.encode_images(images))
    keys = [f"img{i:02d}" for i in range(len(images))]
    meta = metadata_table(keys, tiny.profile, captions=[f"c{i}" for i in range(30)])
    return ClipEmbeddings(vectors, meta, tiny.profile.provenance()), images, encoder


def test_text_and_image_queries_through_the_api(indexed, tiny):
    embeddings, images, encoder = indexed
    search = ClipSearch(embeddings, encoder)
    table = search.image([images[7], images[21]], k=4, labels=["seven", "twenty-one"])
    assert table.num_rows == 8
    first = table.slice(0, 1).to_pylist()[0]
    assert first["query"] == "seven" and first["image_path"] == "img07" and first["rank"] == 1
    assert first["score"] == pytest.approx(
        float(similarity_matrix(embeddings.vectors[7], embeddings.vectors[7])[0, 0])
    )
    assert table.column("image_path").to_pylist()[4] == "img21"
    text = search.text("a smiling old man with a beard", k=5)
    expected, scores = brute_topk(
        embeddings.vectors, encoder.encode_text(["a smiling old man with a beard"]), 5
    )
    assert text.column("row").to_pylist() == expected[0].tolist()
    assert text.column("score").to_pylist() == scores[0].tolist()
    assert set(text.column("method").to_pylist()) == {"exact"}
    assert "embedder_name" not in text.column_names and "caption" in text.column_names


def test_search_refuses_an_encoder_of_another_space(indexed):
    embeddings, _, _ = indexed
    other = load_clip(ClipModelSpec(TINY_NAME, seed=5))
    with pytest.raises(EmbeddingSpaceMismatchError) as error:
        ClipSearch(embeddings, ClipEncoder(other, device="cpu"))
    assert other.profile.weights_sha256[:12] in str(error.value)
    assert embeddings.space["embedder_weights_sha256"][:12] in str(error.value)
    with pytest.raises(ValueError, match="need an encoder"):
        ClipSearch(embeddings).text("x")


def test_contact_sheet_is_a_png_grid_with_labels(indexed):
    embeddings, images, encoder = indexed
    table = ClipSearch(embeddings, encoder).image([images[3]], k=7)
    rows = table.column("row").to_pylist()
    png = contact_sheet(
        [images[r] for r in rows] + [None],
        [*hit_labels(table), "missing"],
        columns=4,
        thumb=64,
        title="query 3",
        warning=encoder.warning,
    )
    sheet = Image.open(io.BytesIO(png))
    assert sheet.format == "PNG" and sheet.size[0] == 4 * 64
    assert sheet.size[1] > 2 * 64, "two rows of thumbnails plus captions and a header"
    assert hit_labels(table)[0].startswith("#1 ") and "img03" in hit_labels(table)[0]
    with pytest.raises(ValueError):
        contact_sheet([images[0]], [])


@pytest.mark.slow
def test_ann_index_reaches_recall_at_10_on_clustered_vectors():
    """100k×512 unit vectors around 2,000 centres (50 each); queries are fresh points of random centres."""
    data = clustered_unit_vectors(2000, 50, 512, intra=0.5, seed=0)
    stored = to_float16(data.vectors)
    space = {**SPACE.provenance(), "embedder_dimension": 512}
    exact = ExactSearch(stored)
    ann = build_ann(stored, space, exact=exact, probe_count=300)
    assert ann.params["recall_at_10"] >= 0.95 and ann.params["kind"] == "faiss.IndexIVFFlat"
    assert ann.params["nlist"] == 2500 and 1 <= ann.params["nprobe"] <= 2500
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((300, 512))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = to_float16(np.sqrt(0.5) * data.centres[rng.integers(0, 2000, 300)] + np.sqrt(0.5) * noise)
    truth = exact.search(queries, 10).index
    found = ann.search(stored, queries, 10)
    assert recall_at_k(found.index, truth) >= 0.95
    again = load_ann(ann.to_bytes(), ann.params_json())
    np.testing.assert_array_equal(again.search(stored, queries, 10).index, found.index)
    assert again.params == ann.params and again.space == space


@pytest.mark.slow
def test_ann_index_centres_text_like_queries_for_the_coarse_step():
    """Text-like queries share one direction (the modality gap); with probe queries of that kind the index
    records their mean and removes it from each query when choosing lists, reaching recall@10 on fresh
    queries; the centre survives saving and loading, and no probe queries means no centring."""
    data = clustered_unit_vectors(2000, 50, 512, intra=0.5, seed=0)
    stored = to_float16(data.vectors)
    space = {**SPACE.provenance(), "embedder_dimension": 512}
    exact = ExactSearch(stored)
    probes = text_like_queries(data, 300, seed=2)
    ann = build_ann(stored, space, exact=exact, probe_queries=probes)
    assert ann.params["coarse_assignment"] == "query minus query_center"
    center = np.asarray(ann.params["query_center"])
    np.testing.assert_array_equal(center, to_float16(probes).astype(np.float64).mean(axis=0))
    assert ann.params["recall_at_10"] >= 0.95 and ann.params["probe_kind"] == "given queries"
    queries = to_float16(text_like_queries(data, 300, seed=1))
    truth = exact.search(queries, 10).index
    found = ann.search(stored, queries, 10)
    assert recall_at_k(found.index, truth) >= 0.95
    again = load_ann(ann.to_bytes(), ann.params_json())
    assert again.params["query_center"] == ann.params["query_center"]
    np.testing.assert_array_equal(again.search(stored, queries, 10).index, found.index)
    plain = build_ann(stored[:20_000], space, probe_count=100)
    assert plain.params["coarse_assignment"] == "query" and "query_center" not in plain.params


def test_search_api_uses_the_index_above_the_limit_and_scores_exactly():
    data = clustered_unit_vectors(40, 50, 64, intra=0.7, seed=4)
    stored = to_float16(data.vectors)
    space = {**SPACE.provenance(), "embedder_dimension": 64}
    meta = metadata_table([f"r{i}" for i in range(len(stored))], EmbedderProfile.from_provenance(space))
    embeddings = ClipEmbeddings(stored, meta, space)
    ann = build_ann(stored, space, probe_count=100)
    search = ClipSearch(embeddings, ann=ann, exact_limit=1000)
    assert search.method == "ann"
    queries = stored[np.random.default_rng(0).choice(len(stored), 100, replace=False)]
    hits = search.vectors(queries, k=5)
    assert recall_at_k(hits.index, brute_topk(stored, queries, 5)[0]) >= 0.9, "approximate, but close"
    found = hits.index >= 0
    np.testing.assert_array_equal(
        hits.score[found], similarity_matrix(queries, stored)[np.nonzero(found)[0], hits.index[found]]
    )
    assert (np.diff(hits.score, axis=1) <= 0).all(), "ranked by the exact score"
    assert set(search.table(hits, [f"q{i}" for i in range(100)]).column("method").to_pylist()) == {"ann"}
    other = {**space, "embedder_weights_sha256": "c" * 64}
    with pytest.raises(EmbeddingSpaceMismatchError):
        ClipSearch(ClipEmbeddings(stored, meta, other), ann=ann)
