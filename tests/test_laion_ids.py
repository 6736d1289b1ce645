"""The LAION-Face id list: any container gives the same int64 splits; one parquet, cheap per-part reads."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from facelake.laion.ids import (
    IDS_SCHEMA,
    N_PARTS,
    convert_face_ids,
    load_face_ids,
    read_part_ids,
    write_face_ids_parquet,
)
from facelake.lake.errors import InputError, UnknownPartitionError
from synthetic.laion_pth import save_face_ids, torch_save_numpy1


@pytest.fixture(scope="module")
def splits() -> list[np.ndarray]:
    """32 splits in no particular order (the file's order must be kept), one of them empty."""
    rng = np.random.default_rng(7)
    result = [
        rng.permutation(rng.choice(10**9, size=int(rng.integers(1, 400)), replace=False)) + part * 10**9
        for part in range(N_PARTS)
    ]
    result[4] = np.zeros(0, np.int64)
    return [split.astype(np.int64) for split in result]


@pytest.mark.parametrize("keyed", [False, True], ids=["list-of-splits", "dict-of-splits"])
@pytest.mark.parametrize("container", ["list", "numpy", "tensor"])
def test_any_container_gives_identical_int64_arrays(tmp_path, splits, container, keyed):
    path = str(tmp_path / "laion_face_ids.pth")
    save_face_ids(path, splits, container, keyed=keyed)
    loaded = load_face_ids(path)
    assert len(loaded) == N_PARTS
    for got, expected in zip(loaded, splits, strict=True):
        assert type(got) is np.ndarray and got.dtype == np.int64 and got.ndim == 1
        assert np.array_equal(got, expected)
    # Membership of plain Python ints works (it would not against 0-d tensors).
    assert int(splits[0][0]) in set(loaded[0].tolist())


def test_splits_as_tuples_sets_and_narrow_ints(tmp_path, splits):
    path = str(tmp_path / "laion_face_ids.pth")
    forms = [tuple, lambda s: set(s.tolist()), lambda s: (s % 2**31).astype(np.int32)]
    expected = [np.sort(s) if i % 3 == 1 else s % 2**31 if i % 3 == 2 else s for i, s in enumerate(splits)]
    torch_save_numpy1([forms[i % 3](s) for i, s in enumerate(splits)], path)
    for got, want in zip(load_face_ids(path), expected, strict=True):
        assert got.dtype == np.int64 and np.array_equal(got, want)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        (torch.arange(5), "expected a list or dict of 32 splits"),
        ([[1, 2]] * 31, "expected 32 splits, got 31"),
        ({i: [i] for i in range(1, 33)}, "expected a dict keyed by split 0..31"),
        ([[1, 2]] * 5 + [[1.5, 2.0]] + [[1]] * 26, "split 5 has non-integer values"),
        ([[1, 2]] * 6 + [np.ones((2, 2), np.int64)] + [[1]] * 25, "split 6 has shape (2, 2)"),
        ([[1, 2]] * 7 + [torch.tensor([0.5])] + [[1]] * 24, "split 7 has non-integer values"),
        ([[1, 2]] * 8 + ["12345"] + [[1]] * 23, "split 8 is a str"),
        ([[1, 2]] * 9 + [[True, False]] + [[1]] * 22, "split 9 has non-integer values"),
    ],
    ids=["tensor", "31-splits", "keys-1..32", "floats", "2-d", "float-tensor", "string", "bools"],
)
def test_malformed_id_files_name_the_file_and_problem(tmp_path, obj, problem):
    path = str(tmp_path / "laion_face_ids.pth")
    torch_save_numpy1(obj, path)
    with pytest.raises(InputError) as caught:
        load_face_ids(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert problem in str(caught.value)


def test_parquet_one_row_group_per_part_and_part_reads(any_storage, splits):
    uri = any_storage.uri("laion_face", "face_ids", "all", "face_ids.parquet")
    stats = write_face_ids_parquet(splits, uri, any_storage)
    assert stats == {
        "rows": sum(map(len, splits)),
        "rows_per_part": [len(s) for s in splits],
        "duplicate_ids": 0,
    }
    with any_storage.open(uri) as handle:
        parquet = pq.ParquetFile(handle)
        assert parquet.schema_arrow.remove_metadata().equals(IDS_SCHEMA)
        assert parquet.metadata.num_row_groups == N_PARTS - 1  # the empty part has none
        table = parquet.read()
    assert table.column("part").to_numpy().tolist() == sorted(table.column("part").to_numpy().tolist())
    for part in range(N_PARTS):
        got = read_part_ids(uri, part, any_storage)
        assert got.dtype == np.int64 and np.array_equal(got, splits[part])


def test_read_part_ids_filters_row_groups_that_mix_parts(local_storage):
    uri = local_storage.uri("mixed.parquet")
    table = pa.table(
        {"part": pa.array([1, 0, 1, 2], pa.int16()), "SAMPLE_ID": pa.array([10, 11, 12, 13], pa.int64())}
    )
    with local_storage.open(uri, "wb") as sink:
        pq.write_table(table, sink)
    assert read_part_ids(uri, 1, local_storage).tolist() == [10, 12]
    assert read_part_ids(uri, 5, local_storage).tolist() == []


def test_read_part_ids_errors(local_storage, splits):
    uri = local_storage.uri("face_ids.parquet")
    with pytest.raises(InputError, match=re.escape("face_ids.parquet: face id parquet not found")):
        read_part_ids(uri, 0, local_storage)
    write_face_ids_parquet(splits, uri, local_storage)
    with pytest.raises(UnknownPartitionError):
        read_part_ids(uri, 32, local_storage)
    wrong = local_storage.uri("wrong.parquet")
    with local_storage.open(wrong, "wb") as sink:
        pq.write_table(pa.table({"id": [1]}), sink)
    with pytest.raises(InputError, match=re.escape("expected columns part, SAMPLE_ID")):
        read_part_ids(wrong, 0, local_storage)


def test_convert_face_ids_end_to_end(local_storage, splits):
    src = local_storage.uri("downloads", "laion_face_ids.pth")
    duplicated = [np.concatenate([s, s[:2]]) for s in splits]
    save_face_ids(src, duplicated, "tensor", storage=local_storage)
    dst = local_storage.uri("laion_face", "face_ids.parquet")
    stats = convert_face_ids(src, dst, local_storage)
    assert stats["rows"] == sum(map(len, duplicated))
    assert stats["duplicate_ids"] == sum(min(2, len(s)) for s in splits)
    assert np.array_equal(read_part_ids(dst, 13, local_storage), duplicated[13])
