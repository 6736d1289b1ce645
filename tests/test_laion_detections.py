"""Released detections (sample2detect_{i}.pth, numpy-1 pickles) -> one parquet row per face, exact values."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from facelake.faces.detection_table import DETECTIONS_SCHEMA, detection_arrays, detections_table
from facelake.laion.detections import convert_sample2detect, sample2detect_name
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage
from synthetic.laion_pth import random_sample2detect, save_sample2detect

N_SAMPLES = 20_000


def expected_rows(mapping: dict) -> dict[str, np.ndarray]:
    """The rows the parquet must hold, built the slow obvious way (file order = score order)."""
    rows = [
        (sample_id, index, box, landmarks, score)
        for sample_id in sorted(mapping)
        for index, (box, landmarks, score) in enumerate(mapping[sample_id])
    ]
    return {
        "sample_id": np.array([r[0] for r in rows], np.int64),
        "face_index": np.array([r[1] for r in rows], np.int16),
        "box": np.array([r[2] for r in rows], np.float32),
        "landmarks": np.array([r[3] for r in rows], np.float32),
        "score": np.array([r[4] for r in rows], np.float32),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A ~20k-sample numpy-1 sample2detect file (keys in random order) converted once."""
    storage = Storage(str(tmp_path_factory.mktemp("lake")))
    rng = np.random.default_rng(11)
    sample_ids = rng.permutation(rng.choice(10**10, size=N_SAMPLES, replace=False)).astype(np.int64)
    mapping = random_sample2detect(sample_ids, seed=5, max_faces=4, no_face_fraction=0.15)
    src = storage.uri("downloads", sample2detect_name(2))
    save_sample2detect(src, mapping, storage=storage)
    dst = storage.uri("laion_face", "detections_released", "00002", "detections.parquet")
    stats = convert_sample2detect(src, dst, storage, part=2, chunk_rows=8_000)
    return storage, mapping, dst, stats


def test_released_file_name_is_not_zero_padded():
    assert sample2detect_name(2) == "sample2detect_2.pth"


def test_conversion_keeps_every_value_exactly(converted):
    storage, mapping, dst, _ = converted
    with storage.open(dst) as handle:
        table = pq.read_table(handle)
    assert table.schema.remove_metadata().equals(DETECTIONS_SCHEMA)
    got, want = detection_arrays(table), expected_rows(mapping)
    for column, values in want.items():
        assert got[column].dtype == values.dtype, column
        assert np.array_equal(got[column], values), column


def test_conversion_stats_and_layout(converted):
    storage, mapping, dst, stats = converted
    counts = np.array([len(faces) for faces in mapping.values()])
    assert stats["part"] == 2
    assert stats["samples"] == N_SAMPLES
    assert stats["faces"] == counts.sum()
    assert stats["samples_without_faces"] == (counts == 0).sum() > 0
    assert stats["faces_per_sample"] == {
        str(k): int((counts == k).sum()) for k in range(5) if (counts == k).any()
    }
    with storage.open(dst) as handle:
        parquet = pq.ParquetFile(handle)
        assert parquet.metadata.num_row_groups == -(-stats["faces"] // 8_000)
        assert parquet.schema_arrow.metadata[b"facelake.source"] == b"sample2detect_2.pth"
        ids = parquet.read(columns=["sample_id", "face_index", "score"])
    sample_id, face_index, score = (ids.column(c).to_numpy() for c in ("sample_id", "face_index", "score"))
    assert np.all(np.diff(sample_id) >= 0)
    same = sample_id[1:] == sample_id[:-1]
    assert np.all(face_index[1:][same] == face_index[:-1][same] + 1)
    assert np.all(face_index[1:][~same] == 0) and face_index[0] == 0
    assert np.all(score[1:][same] <= score[:-1][same])


def test_face_index_follows_score_even_if_the_file_is_unsorted(local_storage):
    mapping = random_sample2detect(np.array([9, 3], np.int64), seed=2, max_faces=3, no_face_fraction=0.0)
    mapping[9] = mapping[9][::-1]  # lowest score first
    src, dst = local_storage.uri("sample2detect_0.pth"), local_storage.uri("out.parquet")
    save_sample2detect(src, mapping, storage=local_storage)
    convert_sample2detect(src, dst, local_storage, part=0)
    with local_storage.open(dst) as handle:
        got = detection_arrays(pq.read_table(handle))
    nine = got["sample_id"] == 9
    assert got["sample_id"].tolist()[0] == 3
    assert np.array_equal(got["score"][nine], np.sort([face[2] for face in mapping[9]])[::-1])
    assert got["face_index"][nine].tolist() == list(range(len(mapping[9])))


def test_conversion_over_s3(s3_storage):
    mapping = random_sample2detect(np.arange(50, dtype=np.int64) * 3, seed=4)
    src = s3_storage.uri("downloads", "sample2detect_5.pth")
    dst = s3_storage.uri("laion_face", "detections_released", "00005", "detections.parquet")
    save_sample2detect(src, mapping, storage=s3_storage)
    stats = convert_sample2detect(src, dst, s3_storage, part=5)
    with s3_storage.open(dst) as handle:
        got = detection_arrays(pq.read_table(handle))
    want = expected_rows(mapping)
    assert stats["faces"] == len(want["score"])
    assert all(np.array_equal(got[c], want[c]) for c in want)


def good_face() -> tuple:
    return (np.zeros(4, np.float32), np.zeros((5, 2), np.float32), np.float32(0.9))


@pytest.mark.parametrize(
    ("bad_faces", "problem"),
    [
        (
            [good_face(), (np.zeros(3, np.float32), *good_face()[1:])],
            "SAMPLE_ID 1234, face 1: box should be numeric with shape (4,), got shape (3,)",
        ),
        (
            [(good_face()[0], np.zeros(10, np.float32), good_face()[2])],
            "SAMPLE_ID 1234, face 0: landmarks should be numeric with shape (5, 2)",
        ),
        (
            [(*good_face()[:2], np.array([0.9], np.float32))],
            "SAMPLE_ID 1234, face 0: score should be numeric with shape ()",
        ),
        ([good_face()[:2]], "SAMPLE_ID 1234, face 0: expected a (box, landmarks, score) triple"),
        (
            [(np.array(["a", "b", "c", "d"]), *good_face()[1:])],
            "SAMPLE_ID 1234, face 0: box should be numeric",
        ),
        ("not faces", "SAMPLE_ID 1234: expected a list of faces, got str"),
    ],
    ids=["box-of-3", "flat-landmarks", "score-array", "pair", "string-box", "str-value"],
)
def test_malformed_face_names_file_and_sample_id(local_storage, bad_faces, problem):
    mapping = {7: [good_face()], 1234: bad_faces, 8: []}
    src = local_storage.uri(sample2detect_name(3))
    save_sample2detect(src, mapping, storage=local_storage)
    with pytest.raises(InputError, match=re.escape(f"{src}: {problem}")):
        convert_sample2detect(src, local_storage.uri("out.parquet"), local_storage, part=3)
    assert not local_storage.exists(local_storage.uri("out.parquet"))


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([1, 2], "expected a dict SAMPLE_ID -> faces, got list"),
        ({"abc": []}, "key 'abc' is a str, expected int(SAMPLE_ID)"),
    ],
)
def test_malformed_top_level(local_storage, obj, problem):
    src = local_storage.uri(sample2detect_name(4))
    save_sample2detect(src, obj, storage=local_storage)
    with pytest.raises(InputError, match=re.escape(f"{src}: {problem}")):
        convert_sample2detect(src, local_storage.uri("out.parquet"), local_storage, part=4)


def test_tuples_numpy_keys_and_float64_are_accepted(local_storage):
    face = (np.arange(4, dtype=np.float64), np.arange(10, dtype=np.float64).reshape(5, 2), np.float64(0.5))
    src = local_storage.uri(sample2detect_name(6))
    save_sample2detect(src, {np.int64(42): (face,), 41: []}, storage=local_storage)
    stats = convert_sample2detect(src, local_storage.uri("out.parquet"), local_storage, part=6)
    assert stats["faces"] == 1 and stats["samples_without_faces"] == 1
    with local_storage.open(local_storage.uri("out.parquet")) as handle:
        got = detection_arrays(pq.read_table(handle))
    assert got["sample_id"].tolist() == [42]
    assert got["box"].tolist() == [[0, 1, 2, 3]] and got["landmarks"].reshape(-1).tolist() == list(range(10))


def test_detections_table_empty_and_flat_landmarks():
    empty = detections_table(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 10)), np.zeros(0))
    assert len(empty) == 0 and empty.schema.equals(DETECTIONS_SCHEMA)
    assert detection_arrays(empty)["landmarks"].shape == (0, 5, 2)
    table = detections_table(
        np.array([5, 5]), np.ones((2, 4)), np.arange(20).reshape(2, 10), np.array([0.1, 0.7])
    )
    arrays = detection_arrays(table)
    assert arrays["score"].tolist() == pytest.approx([0.7, 0.1])
    assert arrays["landmarks"][0].reshape(-1).tolist() == list(range(10, 20))
