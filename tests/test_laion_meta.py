"""filter_meta_part against the authors' convert_parquet.py method, on synthetic parts in the real schema."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from facelake.laion import artifacts
from facelake.laion.ids import N_PARTS, load_face_ids
from facelake.laion.meta import filter_meta_part
from facelake.lake.commit import Attempt, Written, materialize_partition
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage
from synthetic.laion_authors_reference import authors_convert_all, authors_convert_part, authors_output_name
from synthetic.laion_meta import (
    META_SCHEMA,
    PART_ID_STRIDE,
    SyntheticMeta,
    write_meta_part,
    write_meta_parts,
)

PARTS, ROWS = 3, 4000
SIZE_COLUMNS = ("HEIGHT", "WIDTH")


@pytest.fixture(scope="module")
def meta(tmp_path_factory) -> SyntheticMeta:
    """Three parts with small row groups and 10% null HEIGHT/WIDTH; ids with absent ones and duplicates."""
    folder = tmp_path_factory.mktemp("laion400m-meta")
    parts = write_meta_parts(str(folder), PARTS, ROWS, seed=7, row_group_size=1500, null_fraction=0.1)
    absent = np.array([-5, 10**15, (PARTS + 1) * PART_ID_STRIDE], dtype=np.int64)
    face_ids = [np.concatenate([ids, ids[:10], absent]) for ids in parts.face_ids]
    return SyntheticMeta(parts.uris, face_ids)


@pytest.fixture(scope="module")
def authors_outputs(meta, tmp_path_factory) -> list[str]:
    """The authors' outputs for every part, made by their main loop with the ids as a list of ints."""
    folder = tmp_path_factory.mktemp("authors")
    authors_convert_all(
        [ids.tolist() for ids in meta.face_ids], str(Path(meta.uris[0]).parent), str(folder), range(PARTS)
    )
    return [str(folder / authors_output_name(i)) for i in range(PARTS)]


def assert_same_rows(ours: pa.Table, theirs: pa.Table) -> None:
    """Every column equal row for row; the authors' float HEIGHT/WIDTH NaN stand for our int64 nulls."""
    assert ours.num_rows == theirs.num_rows
    for name in ours.column_names:
        if name in SIZE_COLUMNS:
            np.testing.assert_array_equal(ours[name].to_numpy(zero_copy_only=False), theirs[name].to_numpy())
        else:
            assert ours[name].to_pylist() == theirs[name].to_pylist(), name


def as_list(ids: np.ndarray) -> list[int]:
    return ids.tolist()


def as_tensor(ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(ids.copy())


@pytest.mark.parametrize("container", [as_list, np.asarray, as_tensor], ids=["list", "numpy", "tensor"])
def test_matches_authors_row_for_row(meta, authors_outputs, tmp_path, container):
    """Ids through the real loader (a laion_face_ids.pth of that container type) and passed directly."""
    splits = [container(ids) for ids in meta.face_ids]
    splits += [container(np.zeros(0, np.int64))] * (N_PARTS - PARTS)
    torch.save(splits, tmp_path / "laion_face_ids.pth")
    loaded = load_face_ids(str(tmp_path / "laion_face_ids.pth"))
    for i, src in enumerate(meta.uris):
        for how, ids in (("loaded", loaded[i]), ("direct", splits[i])):
            dst = str(tmp_path / how / f"part-{i}.parquet")
            report = filter_meta_part(src, ids, dst)
            ours, theirs = pq.read_table(dst), pq.read_table(authors_outputs[i])

            assert report["rows_in"] == ROWS
            assert report["rows_out"] == theirs.num_rows == ours.num_rows > 0
            assert ours.schema.equals(pq.read_schema(src)) and ours.schema.equals(META_SCHEMA)
            assert "__index_level_0__" in theirs.column_names and "__index_level_0__" not in ours.column_names
            assert theirs.schema.field("HEIGHT").type == pa.float64()  # what the pandas round trip does
            assert ours["HEIGHT"].null_count > 0
            assert_same_rows(ours, theirs.drop_columns(["__index_level_0__"]))


def test_keeps_exactly_the_face_ids_in_file_order(meta, tmp_path):
    src, ids = meta.uris[1], meta.face_ids[1]
    dst = str(tmp_path / "out.parquet")
    filter_meta_part(src, ids, dst)
    source_ids = pq.read_table(src, columns=["SAMPLE_ID"])["SAMPLE_ID"].to_numpy()
    kept = pq.read_table(dst)["SAMPLE_ID"].to_numpy()
    np.testing.assert_array_equal(kept, source_ids[np.isin(source_ids, ids)])
    assert len(kept) == round(ROWS * 0.12)


def test_unsorted_part_with_duplicate_ids_and_int_sizes_matches_authors(meta, tmp_path):
    """Row order follows the file, duplicates are all kept, and a null-free HEIGHT stays int64 for both."""
    table = pq.read_table(meta.uris[0]).drop_null()
    order = np.random.default_rng(3).permutation(table.num_rows)
    table = pa.concat_tables([table.take(order), table.slice(0, 50)])
    src = str(tmp_path / "shuffled.parquet")
    pq.write_table(table, src, row_group_size=700)
    ids = meta.face_ids[0]
    theirs_path, ours_path = str(tmp_path / "theirs.parquet"), str(tmp_path / "ours.parquet")
    kept = authors_convert_part(src, ids.tolist(), theirs_path)
    report = filter_meta_part(src, ids, ours_path)
    ours, theirs = pq.read_table(ours_path), pq.read_table(theirs_path)
    assert report["rows_out"] == kept == ours.num_rows
    assert theirs.schema.field("HEIGHT").type == pa.int64()
    assert ours.schema.equals(table.schema)
    assert_same_rows(ours, theirs.drop_columns(["__index_level_0__"]))


def test_odd_folder_names_are_taken_literally(meta, tmp_path):
    """No hive columns from ``key=value`` folders and no globbing of ``[...]`` in the path."""
    src = tmp_path / "part=7" / "meta[1]" / "part.parquet"
    src.parent.mkdir(parents=True)
    src.write_bytes(Path(meta.uris[0]).read_bytes())
    odd, plain = tmp_path / "odd.parquet", tmp_path / "plain.parquet"
    report = filter_meta_part(str(src), meta.face_ids[0], str(odd))
    filter_meta_part(meta.uris[0], meta.face_ids[0], str(plain))
    assert report["bytes_out"] == odd.stat().st_size
    assert pq.read_table(odd).equals(pq.read_table(plain))


def test_authors_set_of_a_tensor_matches_nothing(meta, tmp_path):
    """Why ids are normalised to int64 arrays: their ``set(tensor)`` holds 0-d tensors no int equals."""
    tensor = torch.from_numpy(meta.face_ids[0].copy())
    assert authors_convert_part(meta.uris[0], tensor, str(tmp_path / "theirs.parquet")) == 0
    assert filter_meta_part(meta.uris[0], tensor, str(tmp_path / "ours.parquet"))["rows_out"] > 0


def test_no_face_ids_gives_an_empty_part_in_the_source_schema(meta, tmp_path):
    dst = str(tmp_path / "empty.parquet")
    report = filter_meta_part(meta.uris[0], [], dst)
    table = pq.read_table(dst)
    assert report["rows_out"] == table.num_rows == 0
    assert table.schema.equals(META_SCHEMA)


def test_non_integer_ids_are_refused(meta, tmp_path):
    with pytest.raises(TypeError, match="integers"):
        filter_meta_part(meta.uris[0], np.array([1.5, 2.0]), str(tmp_path / "x.parquet"))


def test_reads_and_writes_s3(meta, s3_storage, tmp_path):
    src, dst = (
        s3_storage.uri("laion400m-meta", "part.parquet"),
        s3_storage.uri("laion-face-meta", "part.parquet"),
    )
    s3_storage.put_file(meta.uris[2], src)
    report = filter_meta_part(src, meta.face_ids[2], dst, storage=s3_storage)
    local = str(tmp_path / "local.parquet")
    filter_meta_part(meta.uris[2], meta.face_ids[2], local)
    with s3_storage.open(dst, "rb") as handle:
        remote = pq.read_table(handle)
    assert report["rows_out"] == remote.num_rows > 0
    assert remote.equals(pq.read_table(local))
    assert remote.schema.equals(META_SCHEMA)


def test_synthetic_part_written_to_s3(s3_storage):
    uri = s3_storage.uri("laion400m-meta", "part.parquet")
    ids = write_meta_part(uri, 500, seed=2, storage=s3_storage)
    with s3_storage.open(uri, "rb") as handle:
        table = pq.read_table(handle)
    np.testing.assert_array_equal(table["SAMPLE_ID"].to_numpy(), ids)


# --- bad input: an InputError naming the file, and no output left behind ----------------------------------


def corrupt_in_the_middle(data: bytes) -> bytes:
    start = len(data) // 3
    return data[:start] + bytes(5000) + data[start + 5000 :]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: os.urandom(4096), "not a readable parquet file"),
        (lambda data: data[: len(data) // 2], "not a readable parquet file"),
        (lambda data: b"", "not a readable parquet file"),
        (corrupt_in_the_middle, "could not read the part"),
    ],
    ids=["garbage", "truncated", "empty", "corrupt-pages"],
)
def test_damaged_part_is_an_input_error_and_leaves_no_output(meta, tmp_path, damage, problem):
    src, dst = tmp_path / "part.parquet", tmp_path / "out" / "part.parquet"
    src.write_bytes(damage(Path(meta.uris[0]).read_bytes()))
    with pytest.raises(InputError, match=problem) as error:
        filter_meta_part(str(src), meta.face_ids[0], str(dst))
    assert error.value.path == str(src)
    assert not dst.exists()


def spoiled_part(meta: SyntheticMeta, path: Path, spoil) -> str:
    """Part 0 of the synthetic meta, passed through ``spoil`` (table -> table), written to ``path``."""
    pq.write_table(spoil(pq.read_table(meta.uris[0])), path)
    return str(path)


def retyped(table: pa.Table, **types: pa.DataType) -> pa.Table:
    """``table`` with the named columns cast to other Arrow types (same values)."""
    for name, type_ in types.items():
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(type_))
    return table


# (spoil, every problem the message must state); the problems name the column, what it is and what was expected.
BAD_SCHEMAS = {
    "missing-url": (
        lambda t: t.drop_columns(["URL"]),
        ["no URL column, expected string (large_string, string_view accepted)"],
    ),
    "string-sample-id": (
        lambda t: retyped(t, SAMPLE_ID=pa.string()),
        ["SAMPLE_ID is string, expected int64 (int8/16/32, uint8/16/32 accepted)"],
    ),
    "missing-sample-id": (
        lambda t: t.drop_columns(["SAMPLE_ID"]),
        ["no SAMPLE_ID column, expected int64 (int8/16/32, uint8/16/32 accepted)"],
    ),
    "several-at-once": (
        lambda t: retyped(t.drop_columns(["URL", "similarity"]), HEIGHT=pa.float64(), NSFW=pa.binary()),
        [
            "no URL column, expected string",
            "HEIGHT is double, expected int64",
            "NSFW is binary, expected string",
            "no similarity column, expected double (float64; float32 accepted)",
        ],
    ),
    "uint64-sample-id": (
        lambda t: retyped(t, SAMPLE_ID=pa.uint64()),
        ["SAMPLE_ID is uint64, expected int64"],
    ),
    "dictionary-nsfw": (
        lambda t: t.set_column(6, "NSFW", t["NSFW"].dictionary_encode()),
        ["NSFW is dictionary<values=string, indices=int32, ordered=0>, expected string"],
    ),
    "duplicate-text": (
        lambda t: t.append_column("TEXT", t["TEXT"]),
        ["TEXT appears 2 times, expected one column of string"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SCHEMAS))
def test_wrong_schema_is_an_input_error_naming_every_bad_column(meta, tmp_path, case):
    spoil, problems = BAD_SCHEMAS[case]
    src, dst = spoiled_part(meta, tmp_path / "part.parquet", spoil), tmp_path / "out.parquet"
    with pytest.raises(InputError) as error:
        filter_meta_part(src, meta.face_ids[0], str(dst))
    message = str(error.value)
    assert error.value.path == src and message.startswith(f"{src}: not a laion400m-meta part: ")
    assert all(problem in message for problem in problems), message
    assert "(found columns: " in message and message.endswith("; nothing was written")
    assert not dst.exists()


def test_the_whole_message_for_a_part_without_url(meta, tmp_path):
    src = spoiled_part(meta, tmp_path / "part.parquet", lambda t: t.drop_columns(["URL"]))
    with pytest.raises(InputError) as error:
        filter_meta_part(src, meta.face_ids[0], str(tmp_path / "out.parquet"))
    assert str(error.value) == (
        f"{src}: not a laion400m-meta part: no URL column, expected string (large_string, string_view "
        "accepted) (found columns: SAMPLE_ID int64, TEXT string, HEIGHT int64, WIDTH int64, LICENSE string, "
        "NSFW string, similarity double); nothing was written"
    )


@pytest.mark.parametrize("case", ["missing-url", "string-sample-id"])
def test_wrong_schema_commits_no_partition(meta, tmp_path, case):
    """Through the engine's commit path, as ``laion_face_meta`` calls it: the run fails, no manifest, no file."""
    lake = Storage(str(tmp_path / "lake"))
    artifact = artifacts.meta(lake, "00000")
    src = spoiled_part(meta, tmp_path / "part.parquet", BAD_SCHEMAS[case][0])

    def write(attempt: Attempt) -> Written:
        out = attempt.uri("laion_face_part_00000.parquet")
        stats = filter_meta_part(src, meta.face_ids[0], out, lake)
        return Written([attempt.entry(out, rows=stats["rows_out"])], rows=stats["rows_out"], extra=stats)

    with pytest.raises(InputError, match=re.escape(f"{src}: not a laion400m-meta part: ")):
        materialize_partition(artifact, {"source": src}, "1", "test", write)
    assert artifact.manifest() is None
    assert lake.find(artifact.prefix) == [], "nothing half-written under the partition"


def test_lossless_variants_are_accepted_and_widened_to_the_expected_types(meta, tmp_path):
    """Narrower integers, float32 and the other string layouts read as the expected types (same rows)."""
    variants = {
        "SAMPLE_ID": pa.uint32(),
        "HEIGHT": pa.int32(),
        "WIDTH": pa.int16(),
        "URL": pa.large_string(),
        "TEXT": pa.string_view(),
        "similarity": pa.float32(),
    }
    src = spoiled_part(meta, tmp_path / "narrow.parquet", lambda t: retyped(t, **variants))
    assert pq.read_schema(src).field("TEXT").type == pa.string_view()
    narrow_out, plain_out = tmp_path / "narrow_out.parquet", tmp_path / "plain_out.parquet"
    report = filter_meta_part(src, meta.face_ids[0], str(narrow_out))
    filter_meta_part(meta.uris[0], meta.face_ids[0], str(plain_out))
    ours = pq.read_table(narrow_out)
    assert ours.schema.equals(META_SCHEMA)
    assert report["rows_out"] == ours.num_rows > 0
    expected = pq.read_table(plain_out)
    for name in ("SAMPLE_ID", "HEIGHT", "WIDTH", "URL", "TEXT", "LICENSE", "NSFW"):
        assert ours[name].equals(expected[name]), name
    np.testing.assert_allclose(ours["similarity"].to_numpy(), expected["similarity"].to_numpy(), rtol=1e-6)


def test_extra_columns_are_kept(meta, tmp_path):
    src = spoiled_part(
        meta, tmp_path / "extra.parquet", lambda t: t.append_column("aesthetic", t["similarity"])
    )
    dst = tmp_path / "out.parquet"
    filter_meta_part(src, meta.face_ids[0], str(dst))
    assert pq.read_schema(dst).names == [*META_SCHEMA.names, "aesthetic"]


def test_missing_part_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        filter_meta_part(str(tmp_path / "absent.parquet"), [1], str(tmp_path / "out.parquet"))


def test_corrupt_s3_part_leaves_no_s3_output(meta, s3_storage):
    src, dst = s3_storage.uri("meta", "part.parquet"), s3_storage.uri("face", "part.parquet")
    s3_storage.write_bytes(src, corrupt_in_the_middle(Path(meta.uris[0]).read_bytes()))
    with pytest.raises(InputError, match="could not read the part"):
        filter_meta_part(src, meta.face_ids[0], dst, storage=s3_storage)
    assert not s3_storage.exists(dst)


def test_synthetic_parts_have_realistic_strings_and_disjoint_ids(meta):
    tables = [pq.read_table(uri) for uri in meta.uris]
    url_lengths = np.array([len(u) for u in tables[0]["URL"].to_pylist()])
    assert url_lengths.min() >= 80 and url_lengths.max() <= 120
    assert all(u.startswith("https://") for u in tables[0]["URL"].to_pylist()[:100])
    assert tables[0]["SAMPLE_ID"].to_numpy().max() < tables[1]["SAMPLE_ID"].to_numpy().min()


def test_synthetic_part_has_the_real_shape(tmp_path):
    path = str(tmp_path / "p.parquet")
    ids = write_meta_part(
        path, 2000, seed=1, null_fraction=0.2, url_for=lambda s: f"http://127.0.0.1:9/{s}.jpg"
    )
    table = pq.read_table(path)
    assert table.schema.equals(META_SCHEMA)
    np.testing.assert_array_equal(table["SAMPLE_ID"].to_numpy(), ids)
    assert np.all(np.diff(ids) >= 1) and np.any(np.diff(ids) > 1)
    assert table["URL"][5].as_py() == f"http://127.0.0.1:9/{ids[5]}.jpg"
    assert 0.15 < table["HEIGHT"].null_count / 2000 < 0.25
    assert set(table["NSFW"].to_pylist()) <= {"UNLIKELY", "UNSURE", "NSFW"}
    text_lengths = np.array([len(t) for t in table["TEXT"].to_pylist()])
    assert 20 <= np.median(text_lengths) <= 200
