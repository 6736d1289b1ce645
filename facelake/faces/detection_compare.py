"""Compare two detection tables on the same images: IoU-matched recall and precision."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facelake.faces.detection_table import detection_arrays


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a`` [n,4] and ``b`` [m,4] (x1, y1, x2, y2)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _greedy_matches(iou: np.ndarray, threshold: float) -> list[float]:
    """Match pairs greedily by descending IoU, each box at most once; returns the matched IoUs."""
    matched: list[float] = []
    if iou.size == 0:
        return matched
    pairs = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_a, used_b = set(), set()
    for i, j in pairs[order].tolist():
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matched.append(float(iou[i, j]))
    return matched


def _by_sample(table: pa.Table) -> dict[int, np.ndarray]:
    arrays = detection_arrays(table)
    ids, boxes = arrays["sample_id"], arrays["box"]
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    return {int(s): boxes[chunk] for s, chunk in zip(uniq, np.split(order, starts[1:]), strict=True)}


def compare_detections(
    ours: pa.Table, reference: pa.Table, images: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float | int]:
    """Recall (reference faces we found) and precision (our faces in the reference) over ``images``.

    ``images`` are the sample ids both sides looked at (an image with no face has no rows, so it must be
    named explicitly to count).
    """
    value_set = pa.array(np.asarray(images, np.int64))
    ours_by = _by_sample(ours.filter(pc.is_in(ours["sample_id"], value_set=value_set)))
    ref_by = _by_sample(reference.filter(pc.is_in(reference["sample_id"], value_set=value_set)))
    empty = np.zeros((0, 4), np.float32)
    ious: list[float] = []
    for sid in set(ours_by) | set(ref_by):
        ious += _greedy_matches(box_iou(ours_by.get(sid, empty), ref_by.get(sid, empty)), iou_threshold)
    n_ours = sum(len(b) for b in ours_by.values())
    n_ref = sum(len(b) for b in ref_by.values())
    return {
        "images": len(value_set),
        "our_faces": n_ours,
        "reference_faces": n_ref,
        "matched": len(ious),
        "recall": len(ious) / n_ref if n_ref else 1.0,
        "precision": len(ious) / n_ours if n_ours else 1.0,
        "mean_matched_iou": float(np.mean(ious)) if ious else 0.0,
        "iou_threshold": iou_threshold,
    }
