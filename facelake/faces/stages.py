"""Per-shard face stages over a part's downloaded images: our own detection, and identity embeddings.

Each function turns one webdataset shard into one parquet-ready table, so :func:`facelake.lake.shard_stage.run_shard_stage`
can commit shards one by one and resume after a kill. Detection rows use the released detections' schema
plus the detector's name and threshold; embedding rows carry the embedder's provenance (DESIGN §6).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facelake.faces.detection import FaceDetector, flatten_detections
from facelake.faces.detection_table import DETECTIONS_SCHEMA, detection_arrays, detections_table
from facelake.faces.identity import IdentityEmbedder, embedding_table
from facelake.lake.progress import Progress
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import ImageShard, iter_shard_images
from facelake.vectors.spaces import embedding_schema

DETECTED_SCHEMA = DETECTIONS_SCHEMA.append(pa.field("detector", pa.string())).append(
    pa.field("threshold", pa.float32())
)
FACE_ID_FIELDS = [("sample_id", pa.int64()), ("key", pa.string()), ("face_index", pa.int16())]
"""The id columns of an embedding row of :func:`embed_shard` (a detected face of a webdataset sample)."""
EMBEDDED_SCHEMA = embedding_schema(FACE_ID_FIELDS)
""":func:`embed_shard`'s rows as a reader declares them (the embedding's length is the embedder's)."""


@dataclass
class StageCounter:
    """Images, faces and seconds seen by a stage (for images/s and the faces-per-image histogram)."""

    images: int = 0
    skipped: int = 0
    seconds: float = 0.0
    faces_per_image: list[int] = field(default_factory=list)
    progress: Progress | None = None
    """Advanced by every batch's images (and skipped ones), when given."""

    def add(self, images: int, skipped: int, faces_per_image: Iterable[int], seconds: float) -> None:
        """Count one batch: ``images`` decoded, ``skipped`` corrupt, faces per decoded image, model seconds."""
        self.seconds += seconds
        self.images += images
        self.skipped += skipped
        self.faces_per_image.extend(int(c) for c in faces_per_image)
        if self.progress is not None:
            self.progress.advance(images + skipped)

    def histogram(self) -> dict[str, int]:
        values, counts = np.unique(np.asarray(self.faces_per_image, dtype=np.int64), return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}

    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def detect_shard(
    storage: Storage,
    shard: ImageShard,
    detector: FaceDetector,
    batch_size: int = 32,
    decode_threads: int = 0,
    counter: StageCounter | None = None,
) -> pa.Table:
    """Run the detector over a shard's successful images: one row per face (DETECTED_SCHEMA)."""
    tables = [DETECTED_SCHEMA.empty_table()]
    threshold = pa.scalar(float(detector.config()["threshold"]), pa.float32())
    for batch in iter_shard_images(storage, shard, batch_size=batch_size, decode_threads=decode_threads):
        started = time.perf_counter()
        flat = flatten_detections(detector.detect(batch.images, names=batch.keys), batch.sample_ids)
        table = detections_table(flat.sample_ids, flat.boxes, flat.landmarks, flat.scores)
        n = table.num_rows
        table = table.append_column("detector", pa.array([detector.name] * n, pa.string()))
        tables.append(table.append_column("threshold", pa.array([threshold.as_py()] * n, pa.float32())))
        if counter is not None:
            counter.add(len(batch), len(batch.skipped), flat.counts, time.perf_counter() - started)
    return pa.concat_tables(tables)


def embed_shard(
    storage: Storage,
    shard: ImageShard,
    faces: pa.Table,
    embedder: IdentityEmbedder,
    batch_size: int = 32,
    counter: StageCounter | None = None,
) -> pa.Table:
    """Embed every detected face of a shard's images: sample_id, key, face_index, embedding, provenance."""
    faces = faces.filter(pc.is_in(faces["sample_id"], value_set=pa.array(shard.sample_ids, pa.int64())))
    arrays = detection_arrays(faces)
    face_ids = faces["sample_id"].to_numpy()
    face_index = faces["face_index"].to_numpy()
    rows_of: dict[int, np.ndarray] = {}
    if len(face_ids):
        order = np.argsort(face_ids, kind="stable")
        uniq, starts = np.unique(face_ids[order], return_index=True)
        for sid, chunk in zip(uniq.tolist(), np.split(order, starts[1:]), strict=True):
            rows_of[sid] = chunk
    tables = [
        embedding_table(np.zeros((0, embedder.profile.dimension), np.float32), embedder.profile, _ids())
    ]
    for batch in iter_shard_images(storage, shard, batch_size=batch_size):
        started = time.perf_counter()
        images, rows, keys = [], [], []
        for sid, key, image in zip(batch.sample_ids.tolist(), batch.keys, batch.images, strict=True):
            for row in rows_of.get(sid, ()):
                images.append(image)
                rows.append(row)
                keys.append(key)
        if rows:
            idx = np.asarray(rows)
            vectors = embedder.embed(images, arrays["box"][idx], arrays["landmarks"][idx])
            tables.append(
                embedding_table(vectors, embedder.profile, _ids(face_ids[idx], keys, face_index[idx]))
            )
        if counter is not None:
            faces_per_image = [len(rows_of.get(sid, ())) for sid in batch.sample_ids.tolist()]
            counter.add(len(batch), len(batch.skipped), faces_per_image, time.perf_counter() - started)
    return pa.concat_tables(tables)


def _ids(sample_ids=None, keys=None, face_index=None) -> dict[str, pa.Array]:
    values = [
        np.asarray(sample_ids if sample_ids is not None else [], np.int64),
        list(keys or []),
        np.asarray(face_index if face_index is not None else [], np.int16),
    ]
    return {name: pa.array(v, kind) for (name, kind), v in zip(FACE_ID_FIELDS, values, strict=True)}
