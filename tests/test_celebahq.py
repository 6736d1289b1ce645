"""The CelebA-HQ source reader (jxie/celeba-hq parquet layout), one face per image, and the card's output layout.

The two-people source the asset tests and the demo use lives in ``synthetic.celebahq_photos``; its
layout is checked at the end.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facelake.celebahq import dataset as celebahq
from facelake.faces.detection import Detections
from facelake.faces.identity import PROVENANCE_COLUMNS, EmbedderProfile, table_space
from facelake.faces.stages import StageCounter
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage
from synthetic.celebahq_photos import person_copies, write_two_people_source
from synthetic.face_photos import encode_jpeg

# --- reading the source ----------------------------------------------------------------------------------


@pytest.fixture
def lake(tmp_path) -> Storage:
    return Storage(str(tmp_path / "lake"))


def small_jpeg(value: int) -> bytes:
    return encode_jpeg(np.full((8, 8, 3), value, np.uint8))


def test_index_reads_file_names_from_image_path_across_files(lake, tmp_path):
    folder = str(tmp_path / "celeba-hq")
    celebahq.write_source_parquet(
        lake, f"{folder}/train/0000.parquet", [small_jpeg(1), small_jpeg(2)], ["a.jpg", "b.jpg"]
    )
    celebahq.write_source_parquet(lake, f"{folder}/validation/0000.parquet", [small_jpeg(3)], ["c.jpg"])
    index = celebahq.build_index(lake, folder)
    assert index.schema == celebahq.INDEX_SCHEMA
    assert index.to_pylist() == [
        {"file_name": "a.jpg", "source_file": "train/0000.parquet", "source_row": 0},
        {"file_name": "b.jpg", "source_file": "train/0000.parquet", "source_row": 1},
        {"file_name": "c.jpg", "source_file": "validation/0000.parquet", "source_row": 0},
    ]
    assert [celebahq.output_name(s) for s in ("train/0000.parquet", "validation/0000.parquet")] == [
        "train-0000.parquet",
        "validation-0000.parquet",
    ]


def test_a_file_name_column_wins_over_image_path(lake, tmp_path):
    uri = str(tmp_path / "src" / "part.parquet")
    celebahq.write_source_parquet(lake, uri, [small_jpeg(1)], ["x/0001.jpg"], with_file_name_column=True)
    assert celebahq.read_file_names(lake, uri) == ["x/0001.jpg"]  # image.path holds only "0001.jpg"


def write_table(tmp_path, table: pa.Table, name: str = "bad.parquet") -> tuple[str, str]:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    pq.write_table(table, folder / name)
    return str(folder), str(folder / name)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"picture": [b"x"], "label": [0]}), "missing column 'image'"),
        (pa.table({"image": [b"x"]}), "column 'image' must be struct<bytes: binary, path: string>"),
        (pa.table({"image": pa.array([{"path": "a.jpg"}])}), "column 'image' must be struct"),
        (pa.table({"image": pa.array([{"bytes": b"x"}]), "label": [0]}), "no file names"),
        (
            pa.table({"image": pa.array([{"bytes": b"x", "path": None}], celebahq.IMAGE_TYPE)}),
            "empty file name in row",
        ),
        (
            pa.table(
                {"image": pa.array([{"bytes": b"x", "path": "a"}], celebahq.IMAGE_TYPE), "file_name": [3]}
            ),
            "column 'file_name' must be a string",
        ),
    ],
)
def test_bad_source_schemas_name_the_file_and_column(lake, tmp_path, table, message):
    folder, uri = write_table(tmp_path, table)
    with pytest.raises(InputError, match=message) as error:
        celebahq.build_index(lake, folder)
    assert error.value.path == uri


def test_no_parquet_files_duplicates_and_non_parquet_are_refused(lake, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no \.parquet files") as error:
        celebahq.build_index(lake, str(empty))
    assert error.value.path == str(empty)
    folder = str(tmp_path / "dups")
    celebahq.write_source_parquet(lake, f"{folder}/a.parquet", [small_jpeg(1)], ["same.jpg"])
    celebahq.write_source_parquet(lake, f"{folder}/b.parquet", [small_jpeg(2)], ["same.jpg"])
    with pytest.raises(
        InputError, match=r"file name 'same.jpg' is duplicated \(also in a.parquet\)"
    ) as error:
        celebahq.build_index(lake, folder)
    assert error.value.path.endswith("b.parquet")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable parquet file"):
        celebahq.build_index(lake, str(tmp_path / "junk"))


@pytest.mark.parametrize(
    ("payload", "message"), [(b"\xff\xd8 not a jpeg", "undecodable image bytes"), (None, "null")]
)
def test_undecodable_or_missing_image_bytes_name_file_column_row_and_name(lake, tmp_path, payload, message):
    folder = str(tmp_path / "src")
    uri = f"{folder}/0000.parquet"
    celebahq.write_source_parquet(
        lake, uri, [small_jpeg(1), payload, small_jpeg(3)], ["a.jpg", "b.jpg", "c.jpg"]
    )
    index = celebahq.build_index(lake, folder)
    with pytest.raises(InputError, match=rf"column 'image.bytes' row 1 \('b.jpg'\): .*{message}") as error:
        list(celebahq.iter_source_images(lake, folder, index, batch_size=2))
    assert error.value.path == uri


def test_images_are_decoded_in_batches_in_row_order(lake, tmp_path):
    folder = str(tmp_path / "src")
    celebahq.write_source_parquet(
        lake, f"{folder}/0.parquet", [small_jpeg(v) for v in (10, 20, 30)], ["a", "b", "c"]
    )
    celebahq.write_source_parquet(lake, f"{folder}/1.parquet", [small_jpeg(40)], ["d"])
    batches = list(
        celebahq.iter_source_images(lake, folder, celebahq.build_index(lake, folder), batch_size=2)
    )
    assert [(b.source_file, b.rows.tolist(), b.file_names) for b in batches] == [
        ("0.parquet", [0, 1], ["a", "b"]),
        ("0.parquet", [2], ["c"]),
        ("1.parquet", [0], ["d"]),
    ]
    means = [round(float(im.mean())) for b in batches for im in b.images]
    assert all(abs(m - v) <= 2 for m, v in zip(means, (10, 20, 30, 40), strict=True))


# --- one face per image -------------------------------------------------------------------------------------


def detections(boxes: list[list[float]], scores: list[float]) -> Detections:
    n = len(boxes)
    return Detections(
        np.asarray(boxes, np.float32).reshape(n, 4),
        np.zeros((n, 5, 2), np.float32),
        np.asarray(scores, np.float32),
    )


def test_primary_face_is_the_largest_then_the_most_confident():
    assert celebahq.primary_face(detections([], [])) is None
    assert (
        celebahq.primary_face(detections([[0, 0, 10, 10], [0, 0, 30, 30], [5, 5, 20, 20]], [0.99, 0.6, 0.9]))
        == 1
    )
    assert celebahq.primary_face(detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.9])) == 1


class BoxDetector:
    """A stand-in detector: an image of mean value v has v // 50 faces of sizes 10, 20, ... (none below 50)."""

    name = "box-detector"

    def config(self) -> dict:
        return {"threshold": 0.5}

    def detect(self, images, names=None):
        out = []
        for image in images:
            faces = round(float(image.mean())) // 50
            out.append(detections([[0, 0, 10 * (k + 1), 10 * (k + 1)] for k in range(faces)], [0.9] * faces))
        return out


class WidthEmbedder:
    """A stand-in embedder whose 2-d 'embedding' encodes the face box width it was given."""

    profile = EmbedderProfile("width", 2, "0" * 64, True, 0.1)

    def embed(self, images, boxes, landmarks=None):
        widths = np.asarray(boxes)[:, 2] - np.asarray(boxes)[:, 0]
        vectors = np.stack([np.cos(widths / 100), np.sin(widths / 100)], axis=1)
        return vectors.astype(np.float32)


def test_embed_keeps_the_largest_face_and_records_images_without_one(lake, tmp_path):
    folder = str(tmp_path / "src")
    values = {"none.jpg": 20, "one.jpg": 60, "three.jpg": 160}
    celebahq.write_source_parquet(
        lake, f"{folder}/0.parquet", [small_jpeg(v) for v in values.values()], list(values)
    )
    counter = StageCounter()
    batches = celebahq.iter_source_images(lake, folder, celebahq.build_index(lake, folder), batch_size=2)
    embedded = celebahq.embed_source_images(batches, BoxDetector(), WidthEmbedder(), counter)
    table = embedded.embeddings
    assert table["file_name"].to_pylist() == ["one.jpg", "three.jpg"]
    assert table["faces_detected"].to_pylist() == [1, 3]
    assert [box[2] for box in table["face_box"].to_pylist()] == [10, 30], "the largest face is embedded"
    widths = np.degrees(np.arctan2(*np.asarray(table["embedding"].to_pylist()).T[::-1])) * np.pi / 180 * 100
    assert np.allclose(widths, [10, 30], atol=1e-3)
    assert table_space(table)["embedder_random_init"] is True
    assert set(PROVENANCE_COLUMNS) <= set(table.column_names)
    assert embedded.no_face.to_pylist() == [
        {
            "file_name": "none.jpg",
            "source_file": "0.parquet",
            "source_row": 0,
            "reason": embedded.no_face["reason"][0].as_py(),
        }
    ]
    assert "no face detected by box-detector" in embedded.no_face["reason"][0].as_py()
    assert counter.images == 3 and counter.histogram() == {"0": 1, "1": 1, "3": 1}


# --- the card's layout ---------------------------------------------------------------------------------------


def test_clusters_layout_keeps_bytes_and_source_order_and_leaves_out_unlabelled_images(lake, tmp_path):
    folder = str(tmp_path / "src")
    images = {name: small_jpeg(i * 10) for i, name in enumerate("abcde")}
    celebahq.write_source_parquet(lake, f"{folder}/train/0.parquet", [images[n] for n in "abc"], list("abc"))
    celebahq.write_source_parquet(lake, f"{folder}/train/1.parquet", [images[n] for n in "de"], list("de"))
    labels = pa.table(
        {"file_name": ["e", "a", "c", "d"], "cluster_id": [0, 0, 1, 2], "cluster_size": [2, 2, 1, 1]}
    )
    out = tmp_path / "out"
    written = celebahq.write_clusters_layout(
        lake, folder, celebahq.build_index(lake, folder), labels, lambda name: str(out / name), batch_size=2
    )
    assert written == [(str(out / "train-0.parquet"), 2), (str(out / "train-1.parquet"), 2)]
    first, second = (pq.read_table(uri) for uri, _ in written)
    assert first.schema == celebahq.CLUSTERS_SCHEMA and second.schema == celebahq.CLUSTERS_SCHEMA
    assert first.column_names == ["image", "file_name", "cluster_id", "cluster_size"]
    assert first.select(["file_name", "cluster_id", "cluster_size"]).to_pylist() == [
        {"file_name": "a", "cluster_id": 0, "cluster_size": 2},
        {"file_name": "c", "cluster_id": 1, "cluster_size": 1},
    ]
    assert second["file_name"].to_pylist() == ["d", "e"]
    assert [row["bytes"] for row in first["image"].to_pylist()] == [images["a"], images["c"]]
    assert [row["path"] for row in second["image"].to_pylist()] == ["d", "e"]


def test_the_two_people_fixture_is_in_the_jxie_layout(lake, tmp_path):
    source = write_two_people_source(lake, str(tmp_path / "celeba-hq"))
    index = celebahq.build_index(lake, source.folder)
    assert index.num_rows == 2 * len(person_copies("astronaut")) + 1
    assert set(index["file_name"].to_pylist()) == set(source.person)
    schema = pq.read_schema(source.files[0])
    assert schema.field("image").type == celebahq.IMAGE_TYPE and "label" in schema.names
