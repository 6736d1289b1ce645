"""CelebA-HQ as released on the Hugging Face hub, and the celebahq_512_id_clusters output layout.

Source layout (jxie/celeba-hq, the snapshot the clusters card names). What was checked, with the ``search``
tool: the hub's parquet conversion of jxie/celeba-hq (``refs/convert/parquet``, ``default/train/0000.parquet``
… ``0005.parquet`` and ``default/validation``) has train files of exactly the sizes of
mattymchen/celeba-hq's ``data/train-0000{0..5}-of-00006-*.parquet`` (454/456/453/446/386/386 MB), whose
card declares the features ``image`` (``dtype: image``) and ``label`` (``class_label`` female/male), 28,000
train and 2,000 validation rows. The ``datasets`` library stores an ``Image`` feature in parquet as
``struct<bytes: binary, path: string>`` (``Image.pa_type`` in huggingface/datasets). So a source row is an
``image`` struct with the encoded bytes and an optional path, plus columns we ignore (``label``). The
file name of a row is its ``file_name`` column when the file has one, else ``image.path``; a source whose
rows have neither is refused, as are duplicate file names.

Output layout (edgarcancinoe/celebahq_512_id_clusters, seed 003 and the card as stored on
selectdataset.com): columns ``image`` (the image), ``file_name`` (original file name), ``cluster_id``
(DBSCAN-derived identity label, noise points as singleton identities) and ``cluster_size`` (images in that
identity). We write ``image`` back in the same ``struct<bytes, path>`` form, one output file per source
file, rows in source order; images without an embedding (no face found) are not in it and are listed in a
separate table instead.

Faces: one per image, the *primary* face: the largest detected box (ties: the higher score). CelebA-HQ
images are aligned portraits, so the largest face is the subject; smaller ones are background people.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facelake.faces.detection import FaceDetector
from facelake.faces.identity import IdentityEmbedder
from facelake.faces.primary import NamedImages, PrimaryFaceEmbeddings, embed_primary_faces
from facelake.faces.primary import primary_face as primary_face  # re-exported: the largest face per image
from facelake.faces.stages import StageCounter
from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.images import DECODE_ERRORS, decode_rgb
from facelake.lake.storage import Storage

IMAGE_COLUMN = "image"
FILE_NAME_COLUMN = "file_name"
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
"""How the Hugging Face ``datasets`` ``Image`` feature is stored in parquet."""
CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("image", IMAGE_TYPE),
        pa.field("file_name", pa.string()),
        pa.field("cluster_id", pa.int64()),
        pa.field("cluster_size", pa.int64()),
    ]
)
"""The celebahq_512_id_clusters columns."""
INDEX_SCHEMA = pa.schema(
    [
        pa.field("file_name", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
    ]
)
NO_FACE_SCHEMA = INDEX_SCHEMA.append(pa.field("reason", pa.string()))
SOURCE_HINT = "the jxie/celeba-hq parquet export: an 'image' column struct<bytes: binary, path: string>"

DATASET = "celebahq"
INDEX_FILE = "index.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
NO_FACE_FILE = "no_face.parquet"


def images_artifact(storage: Storage, partition: str = "all") -> PartitionArtifact:
    """The index of the source images: ``{root}/celebahq/images/all/index.parquet``."""
    return PartitionArtifact(storage, DATASET, "images", partition)


def embeddings_artifact(storage: Storage, partition: str = "all") -> PartitionArtifact:
    """Primary-face embeddings and the images without a face."""
    return PartitionArtifact(storage, DATASET, "face_embeddings", partition)


def clusters_artifact(storage: Storage, partition: str = "all") -> PartitionArtifact:
    """Identity clusters in the celebahq_512_id_clusters layout, with embeddings and centroids."""
    return PartitionArtifact(storage, DATASET, "identity_clusters", partition)


# --- reading the source ------------------------------------------------------------------------------


def source_files(storage: Storage, folder: str) -> list[str]:
    """The ``.parquet`` files below ``folder``, sorted; none is an error."""
    files = [uri for uri in storage.find(folder) if uri.endswith(".parquet")]
    if not files:
        raise InputError(folder, f"no .parquet files found: expected {SOURCE_HINT}")
    return files


def _file_name_column(uri: str, schema: pa.Schema) -> str:
    """Check a source file's schema; returns where its file names are (``file_name`` or ``image.path``)."""
    if IMAGE_COLUMN not in schema.names:
        raise InputError(uri, f"missing column 'image' ({SOURCE_HINT}); columns are {schema.names}")
    image = schema.field(IMAGE_COLUMN).type
    children = (
        {image.field(i).name: image.field(i).type for i in range(image.num_fields)}
        if pa.types.is_struct(image)
        else {}
    )
    data = children.get("bytes")
    if data is None or not (pa.types.is_binary(data) or pa.types.is_large_binary(data)):
        raise InputError(uri, f"column 'image' must be struct<bytes: binary, path: string>, got {image}")
    if FILE_NAME_COLUMN in schema.names:
        kind = schema.field(FILE_NAME_COLUMN).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(uri, f"column 'file_name' must be a string, got {kind}")
        return FILE_NAME_COLUMN
    if "path" in children:
        return "image.path"
    raise InputError(uri, "no file names: neither a 'file_name' column nor an 'image.path' field")


def _open_parquet(storage: Storage, uri: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(storage.open(uri, "rb"))
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(uri, f"not a readable parquet file: {error}") from error


def read_file_names(storage: Storage, uri: str) -> list[str]:
    """The file name of every row of one source file (schema checked; nulls refused)."""
    parquet = _open_parquet(storage, uri)
    column = _file_name_column(uri, parquet.schema_arrow)
    table = parquet.read(columns=[column])
    values = table.column(0).combine_chunks()
    if column == "image.path":
        values = values.field("path")
    names = values.to_pylist()
    missing = [row for row, name in enumerate(names) if not name]
    if missing:
        raise InputError(uri, f"column {column!r}: empty file name in row(s) {missing[:10]}")
    return names


def build_index(storage: Storage, folder: str) -> pa.Table:
    """One row per source image: file_name, source_file (relative to ``folder``), source_row.

    File names must be unique across all files (they key the output rows)."""
    tables, first_seen = [], {}
    for uri in source_files(storage, folder):
        relative = storage.relative(uri, folder)
        names = read_file_names(storage, uri)
        for name in names:
            if name in first_seen:
                raise InputError(uri, f"file name {name!r} is duplicated (also in {first_seen[name]})")
            first_seen[name] = relative
        tables.append(
            pa.table(
                {
                    "file_name": pa.array(names, pa.string()),
                    "source_file": pa.array([relative] * len(names), pa.string()),
                    "source_row": pa.array(np.arange(len(names), dtype=np.int64)),
                },
                schema=INDEX_SCHEMA,
            )
        )
    return pa.concat_tables(tables)


@dataclass(frozen=True, eq=False)
class SourceBatch:
    """Decoded images of one source file, in row order."""

    source_file: str
    rows: np.ndarray  # int64 [n]
    file_names: list[str]
    images: list[np.ndarray]  # RGB uint8


def _by_source_file(index: pa.Table) -> dict[str, dict[int, str]]:
    """source_file -> {source_row: file_name}, in index order."""
    grouped: dict[str, dict[int, str]] = {}
    for name, source, row in zip(
        index["file_name"].to_pylist(),
        index["source_file"].to_pylist(),
        index["source_row"].to_pylist(),
        strict=True,
    ):
        grouped.setdefault(source, {})[row] = name
    return grouped


def _iter_image_column(storage: Storage, uri: str, batch_size: int) -> Iterator[tuple[int, pa.StructArray]]:
    """(first row, ``image`` struct array) per batch of a source file."""
    parquet = _open_parquet(storage, uri)
    _file_name_column(uri, parquet.schema_arrow)
    start = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[IMAGE_COLUMN]):
        yield start, batch.column(0)
        start += batch.num_rows


def iter_source_images(
    storage: Storage, folder: str, index: pa.Table, batch_size: int = 16
) -> Iterator[SourceBatch]:
    """Decode the indexed images file by file, in batches; null or undecodable bytes raise ``InputError``
    naming the file, the column ``image.bytes``, the row and its file name."""
    for source, wanted in _by_source_file(index).items():
        uri = f"{folder.rstrip('/')}/{source}"
        for start, images in _iter_image_column(storage, uri, batch_size):
            data = images.field("bytes").to_pylist()
            rows, names, decoded = [], [], []
            for offset, payload in enumerate(data):
                row = start + offset
                if row not in wanted:
                    continue
                name = wanted[row]
                if payload is None:
                    raise InputError(uri, f"column 'image.bytes' row {row} ({name!r}): no image bytes (null)")
                try:
                    decoded.append(decode_rgb(payload))
                except DECODE_ERRORS as error:
                    raise InputError(
                        uri, f"column 'image.bytes' row {row} ({name!r}): undecodable image bytes ({error})"
                    ) from error
                rows.append(row)
                names.append(name)
            if rows:
                yield SourceBatch(source, np.asarray(rows, np.int64), names, decoded)


# --- one face per image ------------------------------------------------------------------------------

EmbeddedImages = PrimaryFaceEmbeddings
"""The primary face's embedding per image (with its box and score), and the images with no face."""


def embed_source_images(
    batches: Iterator[SourceBatch],
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    counter: StageCounter | None = None,
) -> EmbeddedImages:
    """Detect faces, keep each image's primary face (:func:`facelake.faces.primary.primary_face`) and embed
    it; images without a face are recorded with their source file and row."""
    named = (
        NamedImages(
            batch.file_names,
            batch.images,
            {"source_file": [batch.source_file] * len(batch.file_names), "source_row": batch.rows.tolist()},
        )
        for batch in batches
    )
    return embed_primary_faces(
        named, detector, embedder, counter, name_column=FILE_NAME_COLUMN, no_face_schema=NO_FACE_SCHEMA
    )


# --- writing the card's layout -----------------------------------------------------------------------


def output_name(source_file: str) -> str:
    """Output file name of a source file: its path below the source folder with ``/`` as ``-``."""
    stem = source_file.replace("/", "-")
    return stem if stem.endswith(".parquet") else f"{stem}.parquet"


def write_clusters_layout(
    storage: Storage,
    folder: str,
    index: pa.Table,
    labels: pa.Table,
    out_uri: Callable[[str], str],
    batch_size: int = 256,
) -> list[tuple[str, int]]:
    """Write the celebahq_512_id_clusters layout, one file per source file: (uri, rows) per written file.

    ``labels`` has ``file_name``, ``cluster_id``, ``cluster_size``; images absent from it are left out.
    """
    lookup = dict(
        zip(
            labels["file_name"].to_pylist(),
            zip(labels["cluster_id"].to_pylist(), labels["cluster_size"].to_pylist(), strict=True),
            strict=True,
        )
    )
    written = []
    for source, names_by_row in _by_source_file(index).items():
        uri = out_uri(output_name(source))
        rows = 0
        with (
            storage.open(uri, "wb") as sink,
            pq.ParquetWriter(sink, CLUSTERS_SCHEMA, compression="zstd") as writer,
        ):
            for start, images in _iter_image_column(storage, f"{folder.rstrip('/')}/{source}", batch_size):
                picked = [
                    offset for offset in range(len(images)) if names_by_row.get(start + offset) in lookup
                ]
                if not picked:
                    continue
                names = [names_by_row[start + offset] for offset in picked]
                image = images.take(pa.array(picked, pa.int64()))
                image = pa.StructArray.from_arrays(
                    [image.field("bytes").cast(pa.binary()), _paths(image, len(picked))],
                    fields=list(IMAGE_TYPE),
                )
                writer.write_table(
                    pa.table(
                        {
                            "image": image,
                            "file_name": pa.array(names, pa.string()),
                            "cluster_id": pa.array([lookup[n][0] for n in names], pa.int64()),
                            "cluster_size": pa.array([lookup[n][1] for n in names], pa.int64()),
                        },
                        schema=CLUSTERS_SCHEMA,
                    )
                )
                rows += len(picked)
        written.append((uri, rows))
    return written


def _paths(image: pa.StructArray, n: int) -> pa.Array:
    if image.type.get_field_index("path") >= 0:
        return image.field("path").cast(pa.string())
    return pa.nulls(n, pa.string())


# --- building a source folder (tests, demos) ---------------------------------------------------------


def write_source_parquet(
    storage: Storage,
    uri: str,
    images: list[bytes | None],
    file_names: list[str],
    *,
    with_file_name_column: bool = False,
    extra: dict | None = None,
) -> None:
    """Write one file in the jxie/celeba-hq layout: ``image`` struct (bytes, path = file name) [+ ``file_name``]."""
    columns: dict = {
        IMAGE_COLUMN: pa.array(
            [
                {"bytes": data, "path": os.path.basename(name)}
                for data, name in zip(images, file_names, strict=True)
            ],
            IMAGE_TYPE,
        )
    }
    if with_file_name_column:
        columns[FILE_NAME_COLUMN] = pa.array(file_names, pa.string())
    columns.update(extra or {})
    with storage.open(uri, "wb") as sink:
        pq.write_table(pa.table(columns), sink)
