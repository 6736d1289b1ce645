"""The released LAION-Face detections (``sample2detect_{i}.pth``) converted once into parquet.

Source (DESIGN §5): a dict ``int(SAMPLE_ID) -> [(box f32[4] x1,y1,x2,y2, landmarks f32[5,2], score f32), …]``
sorted by score, from batch-face RetinaFace, pickled with numpy 1; loaded with
:func:`~facelake.lake.safe_load.load_torch_weights_only` (slow: ~9 s per 100k samples, so convert once).

Parquet (:data:`DETECTIONS_SCHEMA`): one row per face, sorted by ``sample_id`` then ``face_index``;
``sample_id`` int64 joins the download parquet's ``SAMPLE_ID``; ``face_index`` int16, 0 = highest score
(ties keep the file's order); ``box`` fixed_size_list<float32>[4] = x1, y1, x2, y2 (one column, like
``landmarks``, so a face's geometry stays together and reads back as an (n, 4) array without copies);
``landmarks`` fixed_size_list<float32>[10] = x0, y0, …, x4, y4; ``score`` float32. Samples without faces
have no rows (they are counted in the stats). Our own detections (issue 3) use the same columns.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from facelake.faces.detection_table import DETECTIONS_SCHEMA, detections_table
from facelake.lake.errors import InputError
from facelake.lake.safe_load import load_torch_weights_only
from facelake.lake.storage import Storage


def sample2detect_name(part: int) -> str:
    """File name of a part's released detections (not zero-padded, unlike the meta parts)."""
    return f"sample2detect_{part}.pth"


# --- reading the released dict ---------------------------------------------------------------------------


def _numeric(value: Any) -> np.ndarray | None:
    try:
        array = np.asarray(value)
    except Exception:
        return None
    return array if array.dtype.kind in "fiu" else None


def _check_face(face: Any, sample_id: Any, index: int, path: str) -> None:
    """Raise an InputError naming the file, SAMPLE_ID and face when one face is malformed."""
    where = f"SAMPLE_ID {sample_id}, face {index}"
    if not isinstance(face, tuple | list) or len(face) != 3:
        raise InputError(
            path, f"{where}: expected a (box, landmarks, score) triple, got {type(face).__name__}"
        )
    expected = {"box": (4,), "landmarks": (5, 2), "score": ()}
    for (name, shape), value in zip(expected.items(), face, strict=True):
        array = _numeric(value)
        if array is None or array.shape != shape:
            got = "non-numeric" if array is None else f"shape {array.shape}"
            raise InputError(path, f"{where}: {name} should be numeric with shape {shape}, got {got}")


def _check_sample(sample_id: Any, faces: Any, path: str) -> None:
    if not isinstance(sample_id, int | np.integer) or isinstance(sample_id, bool):
        raise InputError(path, f"key {sample_id!r} is a {type(sample_id).__name__}, expected int(SAMPLE_ID)")
    if not isinstance(faces, list | tuple):
        raise InputError(path, f"SAMPLE_ID {sample_id}: expected a list of faces, got {type(faces).__name__}")
    for index, face in enumerate(faces):
        _check_face(face, sample_id, index, path)


def _check_all(mapping: dict[Any, Any], path: str) -> None:
    """Check every entry, raising on the first malformed one (the slow path)."""
    for sample_id, faces in mapping.items():
        _check_sample(sample_id, faces, path)


def _malformed(mapping: dict[Any, Any], path: str) -> InputError:
    """The precise error for a dict the fast path could not stack."""
    _check_all(mapping, path)
    return InputError(path, "malformed detections: faces of mixed dtypes or shapes")


def _flatten(mapping: Any, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-face sample ids, boxes (n,4), landmarks (n,5,2), scores (n,) and faces per sample.

    Fast path: stack all faces at once and check the shapes of the results; only when that fails is every
    face checked one by one, to name the offending SAMPLE_ID.
    """
    if not isinstance(mapping, dict):
        raise InputError(path, f"expected a dict SAMPLE_ID -> faces, got {type(mapping).__name__}")
    keys, values = list(mapping.keys()), list(mapping.values())
    if not all(type(key) is int for key in keys) or not all(type(faces) is list for faces in values):
        _check_all(mapping, path)  # other int and sequence types are fine; anything else raises here
    counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    faces = [face for sample_faces in values for face in sample_faces]
    n = len(faces)
    try:
        if not all(len(face) == 3 for face in faces):
            raise _malformed(mapping, path)
        boxes = np.stack([face[0] for face in faces]) if n else np.zeros((0, 4), np.float32)
        landmarks = np.stack([face[1] for face in faces]) if n else np.zeros((0, 5, 2), np.float32)
        scores = np.array([face[2] for face in faces]) if n else np.zeros(0, np.float32)
    except (TypeError, ValueError):
        raise _malformed(mapping, path) from None
    shapes_ok = boxes.shape == (n, 4) and landmarks.shape == (n, 5, 2) and scores.shape == (n,)
    if not shapes_ok or any(array.dtype.kind not in "fiu" for array in (boxes, landmarks, scores)):
        raise _malformed(mapping, path)
    sample_ids = np.repeat(np.asarray(keys, np.int64), counts)
    return sample_ids, boxes, landmarks, scores, counts


def _histogram(counts: np.ndarray) -> dict[str, int]:
    """Faces per sample -> number of samples, with string keys (JSON metadata)."""
    return {str(faces): int(samples) for faces, samples in enumerate(np.bincount(counts)) if samples}


def convert_sample2detect(
    src_uri: str, dst_uri: str, storage: Storage, part: int, chunk_rows: int = 1_000_000
) -> dict[str, Any]:
    """Load ``sample2detect_{part}.pth`` safely, validate it, write one detections parquet; return stats.

    Row groups hold ``chunk_rows`` faces. Stats: samples, faces, samples_without_faces, faces_per_sample
    (histogram, faces -> samples), load_seconds, convert_seconds.
    """
    started = time.perf_counter()
    mapping = load_torch_weights_only(src_uri, storage)
    loaded = time.perf_counter()
    sample_ids, boxes, landmarks, scores, counts = _flatten(mapping, src_uri)
    table = detections_table(sample_ids, boxes, landmarks, scores)
    metadata = {b"facelake.source": os.path.basename(src_uri).encode(), b"facelake.part": str(part).encode()}
    schema = DETECTIONS_SCHEMA.with_metadata(metadata)
    with storage.open(dst_uri, "wb") as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        writer.write_table(table, row_group_size=max(1, chunk_rows))
    return {
        "part": part,
        "samples": len(counts),
        "faces": len(table),
        "samples_without_faces": int((counts == 0).sum()),
        "faces_per_sample": _histogram(counts),
        "load_seconds": round(loaded - started, 3),
        "convert_seconds": round(time.perf_counter() - loaded, 3),
    }
