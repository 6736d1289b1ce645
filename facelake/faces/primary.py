"""One face per image: detect, keep the *primary* face (the largest box, ties: the higher score), embed it.

Shared by the dataset domains whose images are portraits of one subject (CelebA-HQ, SFHQ): there the largest
face is the subject and smaller ones are background people. Images come in :class:`NamedImages` batches
that carry, besides the decoded images, any id columns the dataset keeps for images without a face (CelebA-HQ:
the source file and row). The result has one embedding row per image with a face (``name_column``,
``face_box``, ``face_score``, ``faces_detected``, ``embedding`` and the embedder's provenance, see
:func:`facelake.faces.identity.embedding_table`) and one ``no_face`` row per image without one (the name,
the batch's id columns, ``reason``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from facelake.faces.detection import Detections, FaceDetector
from facelake.faces.identity import IdentityEmbedder, embedding_table
from facelake.faces.stages import StageCounter
from facelake.vectors.spaces import embedding_schema


def primary_face(detections: Detections) -> int | None:
    """Index of the largest detected face (ties: the higher score), or None if there is none."""
    if len(detections) == 0:
        return None
    boxes = np.asarray(detections.boxes, np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    return int(np.lexsort((-np.asarray(detections.scores), -areas))[0])


@dataclass(frozen=True, eq=False)
class NamedImages:
    """A batch of decoded RGB images with their names and per-image id columns (kept for no-face rows)."""

    names: list[str]
    images: list[np.ndarray]
    ids: Mapping[str, Sequence] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True, eq=False)
class PrimaryFaceEmbeddings:
    """The primary face's embedding per image (with its box and score), and the images with no face."""

    embeddings: pa.Table
    no_face: pa.Table


def face_columns(
    name_column: str, names: list[str], boxes: np.ndarray, scores: np.ndarray, counts: Sequence[int]
) -> dict[str, pa.Array]:
    """The id and face columns of primary-face embedding rows."""
    flat = pa.array(np.asarray(boxes, np.float32).reshape(-1), pa.float32())
    values = [
        pa.FixedSizeListArray.from_arrays(flat, 4),
        pa.array(np.asarray(scores, np.float32)),
        pa.array(np.asarray(counts, np.int32)),
    ]
    faces = {name: array.cast(kind) for (name, kind), array in zip(FACE_FIELDS, values, strict=True)}
    return {name_column: pa.array(names, pa.string()), **faces}


FACE_FIELDS = [
    ("face_box", pa.list_(pa.float32(), 4)),
    ("face_score", pa.float32()),
    ("faces_detected", pa.int32()),
]
"""The face columns of primary-face embedding rows (:func:`face_columns`), after the name."""


def primary_face_fields(name_column: str) -> list[tuple[str, pa.DataType]]:
    """The id columns of primary-face embedding rows: ``name_column`` (a string), then :data:`FACE_FIELDS`."""
    return [(name_column, pa.string()), *FACE_FIELDS]


def primary_embeddings_schema(name_column: str) -> pa.Schema:
    """The columns of primary-face embedding rows: :func:`primary_face_fields`, ``embedding`` and the
    embedder's provenance (:func:`facelake.vectors.spaces.embedding_schema`)."""
    return embedding_schema(primary_face_fields(name_column))


def no_face_reason(detector: FaceDetector) -> str:
    """Why an image has no embedding row."""
    return f"no face detected by {detector.name} (score > {detector.config()['threshold']})"


def embed_primary_faces(
    batches: Iterable[NamedImages],
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    counter: StageCounter | None = None,
    *,
    name_column: str = "file_name",
    no_face_schema: pa.Schema | None = None,
) -> PrimaryFaceEmbeddings:
    """Detect faces, keep each image's primary face and embed it; images without a face are recorded.

    ``no_face_schema`` (default: ``name_column`` and ``reason``, strings) must hold ``name_column``, every id
    column the batches carry, and ``reason``.
    """
    profile = embedder.profile
    empty = face_columns(name_column, [], np.zeros((0, 4)), np.zeros(0), [])
    tables = [embedding_table(np.zeros((0, profile.dimension), np.float32), profile, empty)]
    schema = no_face_schema or pa.schema(
        [pa.field(name_column, pa.string()), pa.field("reason", pa.string())]
    )
    no_face: dict[str, list] = {name: [] for name in schema.names}
    reason = no_face_reason(detector)
    for batch in batches:
        started = time.perf_counter()
        found = detector.detect(batch.images, names=batch.names)
        keep, boxes, landmarks, scores, counts = [], [], [], [], []
        for slot, detections in enumerate(found):
            face = primary_face(detections)
            if face is None:
                no_face[name_column].append(batch.names[slot])
                for column, values in batch.ids.items():
                    no_face[column].append(values[slot])
                no_face["reason"].append(reason)
                continue
            keep.append(slot)
            boxes.append(detections.boxes[face])
            landmarks.append(detections.landmarks[face])
            scores.append(detections.scores[face])
            counts.append(len(detections))
        if keep:
            vectors = embedder.embed([batch.images[i] for i in keep], np.stack(boxes), np.stack(landmarks))
            names = [batch.names[i] for i in keep]
            columns = face_columns(name_column, names, np.stack(boxes), np.asarray(scores), counts)
            tables.append(embedding_table(vectors, profile, columns))
        if counter is not None:
            counter.seconds += time.perf_counter() - started
            counter.images += len(batch.images)
            counter.faces_per_image.extend(len(d) for d in found)
    return PrimaryFaceEmbeddings(pa.concat_tables(tables), pa.table(no_face, schema=schema))
