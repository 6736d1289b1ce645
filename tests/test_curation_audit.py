"""The identity audit's numbers on known vectors: own and nearest-other cosines, the spread from the sum of unit
vectors equal to the brute-force mean pairwise cosine distance, the nearest identity by image centroid, the
consistency threshold (configured, or the embedder's own), and the dataset plan's counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from facelake.curation.audit import audit_identities, inconsistent_keys
from facelake.curation.dataset import plan_dataset
from facelake.faces.identity import EmbedderProfile, EmbeddingSpaceMismatchError, embedding_table

PROFILE = EmbedderProfile("dlib_resnet_v1", 16, "d" * 64, False, 0.1)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def tables(seed: int = 0) -> tuple[pa.Table, pa.Table, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    refs = unit(rng.standard_normal((3, 16)))
    own = np.repeat([0, 1, 2], [4, 3, 5])
    images = unit(refs[own] + 0.4 * rng.standard_normal((len(own), 16)))
    ids = [f"v-{i:07d}" for i in range(3)]
    keys = [f"{i:07d}-{n:04d}" for i, n in zip(own, range(len(own)), strict=True)]
    references = embedding_table(refs, PROFILE, {"identity_id": pa.array(ids)})
    embeddings = embedding_table(
        images, PROFILE, {"key": pa.array(keys), "identity_id": pa.array([ids[i] for i in own])}
    )
    return embeddings, references, images, refs, ids


def test_audit_numbers_equal_brute_force() -> None:
    embeddings, references, images, refs, ids = tables()
    audit = audit_identities(embeddings, references, 0.8, device="cpu")
    own = np.repeat([0, 1, 2], [4, 3, 5])
    full = images.astype(np.float64) @ refs.astype(np.float64).T
    rows = audit.images.to_pylist()
    for i, row in enumerate(rows):
        others = [j for j in range(3) if j != own[i]]
        best = max(others, key=lambda j: full[i, j])
        assert row["own_cosine"] == pytest.approx(full[i, own[i]], abs=1e-9)
        assert row["other_identity_id"] == ids[best] and row["other_cosine"] == pytest.approx(
            full[i, best], abs=1e-6
        )
        assert row["inconsistent"] == (full[i, own[i]] < 0.8)
    for k, row in enumerate(audit.identities.to_pylist()):
        members = images[own == k].astype(np.float64)
        gram = members @ members.T
        n = len(members)
        assert row["spread"] == pytest.approx(1 - (gram.sum() - n) / (n * (n - 1)), abs=1e-9)
        centroid = members.sum(0) / np.linalg.norm(members.sum(0))
        cosines = refs.astype(np.float64) @ centroid
        nearest = max((j for j in range(3) if j != k), key=lambda j: cosines[j])
        assert row["nearest_identity_id"] == ids[nearest]
        assert row["margin"] == pytest.approx(cosines[k] - cosines[nearest], abs=1e-6)
        assert row["mean_cosine"] == pytest.approx(full[own == k, k].mean(), abs=1e-9)
    assert audit.summary["inconsistent_images"] == len(inconsistent_keys(audit.images))
    default = audit_identities(embeddings, references, device="cpu")
    assert default.summary["consistency"] == pytest.approx(0.9)  # 1 - the embedder's 0.1


def test_the_audit_refuses_references_of_another_space() -> None:
    embeddings, references, *_ = tables()
    other = EmbedderProfile("arcface_onnx", 16, "a" * 64, False, 0.35)
    foreign = embedding_table(
        np.eye(3, 16, dtype=np.float32), other, {"identity_id": references["identity_id"]}
    )
    with pytest.raises(EmbeddingSpaceMismatchError, match="arcface_onnx"):
        audit_identities(embeddings, foreign)


def test_the_dataset_plan_reports_the_overlap_of_its_filters() -> None:
    aligned = pa.table(
        {
            "key": [f"k{i}" for i in range(6)],
            "identity_id": ["b", "b", "a", "a", "c", "c"],
            "index": pa.array([0, 1, 0, 1, 0, 1], pa.int32()),
        }
    )
    plan = plan_dataset(aligned, {"k0", "k1", "k4"}, {"k1", "k2"}, {"generated": 8, "no_face": 2})
    assert plan.counts == {
        "generated": 8,
        "no_face": 2,
        "aligned": 6,
        "inconsistent": 3,
        "leaking": 2,
        "leaking_and_inconsistent": 1,
        "removed": 4,
        "kept": 2,
        "identities_aligned": 3,
        "identities_kept": 2,
    }
    assert plan.kept.to_pylist() == [
        {"key": "k3", "identity_id": "a", "index": 1, "label": 0},
        {"key": "k5", "identity_id": "c", "index": 1, "label": 1},
    ]
    assert sorted(plan.removed["key"].to_pylist()) == ["k0", "k1", "k2", "k4"]
