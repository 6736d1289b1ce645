"""One face-detection table for every detector: the released LAION-Face detections and our own.

:data:`DETECTIONS_SCHEMA`: one row per face, sorted by ``sample_id`` then ``face_index``; ``sample_id`` int64;
``face_index`` int16, 0 = highest score (ties keep the input order); ``box`` fixed_size_list<float32>[4] =
x1, y1, x2, y2; ``landmarks`` fixed_size_list<float32>[10] = x0, y0, …, x4, y4; ``score`` float32.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DETECTIONS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("face_index", pa.int16(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 10), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


def detections_table(
    sample_ids: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, scores: np.ndarray
) -> pa.Table:
    """Per-face arrays -> a table in DETECTIONS_SCHEMA, sorted by sample_id then descending score.

    ``boxes`` (n, 4), ``landmarks`` (n, 5, 2) or (n, 10), ``scores`` (n,); built column-wise, no row loop.
    """
    sample_ids = np.asarray(sample_ids, np.int64)
    scores = np.asarray(scores, np.float32)
    n = len(sample_ids)
    order = np.lexsort((np.arange(n), -scores, sample_ids))
    sample_ids = sample_ids[order]
    starts = np.flatnonzero(np.r_[True, sample_ids[1:] != sample_ids[:-1]]) if n else np.zeros(0, np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    face_index = (np.arange(n) - group_start).astype(np.int16)
    columns = [
        pa.array(sample_ids),
        pa.array(face_index),
        _fixed_size_list(np.asarray(boxes, np.float32)[order], 4),
        _fixed_size_list(np.asarray(landmarks, np.float32)[order], 10),
        pa.array(scores[order]),
    ]
    return pa.Table.from_arrays(columns, schema=DETECTIONS_SCHEMA)


def _fixed_size_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), width)


def detection_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """A detections table back as numpy: sample_id, face_index, box (n,4), landmarks (n,5,2), score."""

    def values(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return table.column(name).combine_chunks().flatten().to_numpy().reshape(shape)

    return {
        "sample_id": table.column("sample_id").to_numpy(),
        "face_index": table.column("face_index").to_numpy(),
        "box": values("box", (len(table), 4)),
        "landmarks": values("landmarks", (len(table), 5, 2)),
        "score": table.column("score").to_numpy(),
    }
