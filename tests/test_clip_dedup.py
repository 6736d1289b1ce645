"""Near-duplicate removal: exactly the pairs above the threshold (knife-edge pairs within 1e-5 on both sides
included), whatever the screen and block size; groups, the keep rule, tables, and spaces never mixed."""

from __future__ import annotations

import numpy as np
import pytest

from facelake.clip.dedup import (
    count_near_duplicates,
    group_and_keep,
    groups_table,
    keep_table,
    near_duplicate_pairs,
    near_duplicates,
    pairs_table,
)
from facelake.clip.layout import ClipEmbeddings, metadata_table
from facelake.clip.similarity import similarity_matrix
from facelake.vectors.spaces import EmbedderProfile, EmbeddingSpaceMismatchError
from synthetic.clip import planted_near_duplicates

THRESHOLD = 0.92
SCREENS = ("numpy-float32", "torch-float32", "torch-bfloat16")
SPACE = EmbedderProfile("open_clip:test", 512, "b" * 64, True, 0.08, config='{"quick_gelu":true}')


@pytest.fixture(scope="module")
def world():
    return planted_near_duplicates(2500, 512, THRESHOLD, seed=0)


@pytest.fixture(scope="module")
def truth(world):
    similarity = similarity_matrix(world.vectors, world.vectors)
    rows, cols = np.nonzero(np.triu(similarity > THRESHOLD, k=1))
    return set(zip(rows.tolist(), cols.tolist(), strict=True)), similarity


def test_planted_pairs_sit_where_intended(world, truth):
    _, similarity = truth
    knife = [similarity[i, j] - THRESHOLD for i, j in world.above[:4] + world.below[:4]]
    assert all(0 < d < 1e-5 for d in knife[:4]) and all(-1e-5 < d < 0 for d in knife[4:])


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("block", [300, 1024, None])
def test_finds_exactly_the_pairs_above_the_threshold(world, truth, screen, block):
    expected, similarity = truth
    pairs = near_duplicate_pairs(world.vectors, THRESHOLD, screen=screen, block=block, device="cpu")
    found = set(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True))
    assert found == expected
    assert set(world.above) <= found and not set(world.below) & found
    np.testing.assert_array_equal(pairs.similarity, similarity[pairs.rows, pairs.cols])
    assert pairs.stats["screen"] == screen and pairs.stats["band_pairs"] >= 8
    assert (pairs.rows < pairs.cols).all()


def _embeddings(world, profile=SPACE, prefix="k") -> ClipEmbeddings:
    n = len(world.vectors)
    meta = metadata_table([f"{prefix}{i:05d}" for i in range(n)], profile, sizes=world.sizes)
    return ClipEmbeddings(world.vectors, meta, profile.provenance(), [("00000", n)], prefix)


def test_keep_list_is_identical_across_runs_and_block_sizes(world):
    data = _embeddings(world)
    results = [
        near_duplicates(data, THRESHOLD, screen=screen, block=block, device="cpu")[0]
        for screen, block in (
            ("torch-bfloat16", 256),
            ("torch-bfloat16", 256),
            ("numpy-float32", 700),
            ("auto", None),
        )
    ]
    keeps = [keep_table(r, data) for r in results]
    assert all(k.equals(keeps[0]) for k in keeps[1:])
    assert all(groups_table(r, data).equals(groups_table(results[0], data)) for r in results[1:])
    counts = results[0].counts()
    planted_above = len(world.above)
    assert counts["pairs"] == planted_above
    assert counts["groups"] == planted_above - 1, "the chain of three is one group"
    assert counts["removed"] == counts["images_in_groups"] - counts["groups"]
    kept = np.flatnonzero(results[0].keep)
    assert count_near_duplicates(world.vectors[kept], THRESHOLD) == 0, "no two kept images exceed it"


def test_keep_rule_largest_resolution_then_smallest_key():
    vectors = np.zeros((5, 4), np.float16)
    vectors[:, 0] = 1
    pairs = near_duplicate_pairs(vectors, THRESHOLD, device="cpu")
    assert len(pairs) == 10
    sizes = np.array([[10, 10], [20, 20], [20, 20], [5, 5], [1, 1]])
    keys = ["e", "d", "c", "b", "a"]
    result = group_and_keep(pairs, 5, widths=sizes[:, 0], heights=sizes[:, 1], keys=keys)
    assert result.keep.tolist() == [False, False, True, False, False], "400 px², then key 'c' < 'd'"
    same_size = group_and_keep(pairs, 5, widths=np.ones(5), heights=np.ones(5), keys=keys)
    assert np.flatnonzero(same_size.keep).tolist() == [4], "then the smallest key"
    no_keys = group_and_keep(pairs, 5)
    assert np.flatnonzero(no_keys.keep).tolist() == [0], "then the smallest row"


def test_tables_name_the_groups_and_pairs(world):
    data = _embeddings(world)
    result, _ = near_duplicates(data, THRESHOLD, device="cpu")
    groups = groups_table(result, data)
    assert groups.num_rows == result.counts()["images_in_groups"]
    assert sum(groups.column("kept").to_pylist()) == result.groups
    kept_rows = groups.filter(groups.column("kept")).column("row").to_pylist()
    assert all(result.keep[r] for r in kept_rows)
    kept_similarity = groups.filter(groups.column("kept")).column("similarity_to_kept").to_pylist()
    assert all(s == pytest.approx(1.0, abs=2e-3) for s in kept_similarity)
    pairs = pairs_table(result, data)
    assert pairs.num_rows == len(world.above)
    assert min(pairs.column("similarity").to_pylist()) > THRESHOLD
    assert pairs.column("image_path_a").to_pylist()[0] == f"k{pairs.column('row_a').to_pylist()[0]:05d}"
    keep = keep_table(result, data)
    assert keep.num_rows == result.counts()["kept"] and {"row", "image_path"} <= set(keep.column_names)


def test_works_across_sets_of_one_space_and_refuses_two_spaces(world):
    half = len(world.vectors) // 2
    first = _embeddings(world, prefix="a")
    a = ClipEmbeddings(first.vectors[:half], first.metadata.slice(0, half), first.space, [("0", half)], "a")
    b = ClipEmbeddings(first.vectors[half:], first.metadata.slice(half), first.space, [("1", half)], "b")
    result, combined = near_duplicates([a, b], THRESHOLD, names=["laion/00000", "celebahq"], device="cpu")
    alone, _ = near_duplicates(first, THRESHOLD, device="cpu")
    assert result.keep.tolist() == alone.keep.tolist()
    assert set(combined.metadata.column("source").to_pylist()) == {"laion/00000", "celebahq"}
    other = EmbedderProfile("open_clip:test", 512, "b" * 64, True, 0.08, config='{"quick_gelu":false}')
    c = _embeddings(world, profile=other, prefix="c")
    with pytest.raises(EmbeddingSpaceMismatchError) as error:
        near_duplicates([a, c], THRESHOLD)
    assert "config" in str(error.value)


def test_rejects_a_nonsense_threshold(world):
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_pairs(world.vectors, 1.5)
