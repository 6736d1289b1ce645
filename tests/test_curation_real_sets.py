"""Real embedding sets for the leakage audit, by asset name or table URI, from what the lake has committed."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from facelake.curation.real_sets import real_set_assets, real_set_fingerprints, resolve_real_sets
from facelake.faces.identity import EmbedderProfile, embedding_table
from facelake.lake.errors import FacelakeError
from facelake.lake.storage import Storage

PROFILE = EmbedderProfile("dlib_resnet_v1", 8, "d" * 64, False, 0.18)


def write_table(storage: Storage, name: str, rows: int = 5) -> str:
    vectors = np.random.default_rng(0).standard_normal((rows, PROFILE.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = embedding_table(vectors, PROFILE, {"key": [f"k{i}" for i in range(rows)]})
    uri = storage.uri("tables", name)
    with storage.open(uri, "wb") as handle:
        pq.write_table(table, handle)
    return uri


def test_a_table_uri_is_a_set_named_by_its_file_keyed_by_its_key_column(any_storage: Storage) -> None:
    uri = write_table(any_storage, "ffhq.parquet")
    [real] = resolve_real_sets(any_storage, [uri])
    assert real.name == "ffhq.parquet" and real.table.num_rows == 5 and real.keys()[:2] == ["k0", "k1"]
    assert real_set_assets([uri]) == []
    assert real_set_fingerprints(any_storage, [uri]) == {uri: any_storage.fingerprint(uri)}


def test_named_assets_are_lineage_and_must_be_committed(local_storage: Storage) -> None:
    names = [
        "hyperface_gallery",
        "laion_face_embeddings[00000]",
        "laion_face_embeddings",
        "celebahq_face_embeddings",
    ]
    assert real_set_assets(names) == [
        "hyperface_gallery",
        "laion_face_embeddings",
        "celebahq_face_embeddings",
    ]
    assert real_set_fingerprints(local_storage, names) == {}, "nothing committed: nothing to fingerprint"
    with pytest.raises(
        FacelakeError, match=r"laion_face_embeddings\[00000\].*materialize laion_face_embeddings"
    ):
        resolve_real_sets(local_storage, ["laion_face_embeddings[00000]"])
    with pytest.raises(FacelakeError, match="expected one of"):
        resolve_real_sets(local_storage, ["ffhq"])
