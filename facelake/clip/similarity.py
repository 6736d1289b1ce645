"""The ONE similarity of stored CLIP embeddings, used by search, near-duplicate removal and their checks.

``similarity(x, y) = Σ_k float64(x_k) · float64(y_k)`` of the stored float16 vectors, without renormalising
(a stored row's norm is 1 to within ~2⁻¹¹). A float16 × float16 product is exact in float64 and the sum of
d of them has float64's rounding error only (:func:`facelake.clusters.dbscan.float64_bound`, ~1e-13 at
d=512), so this is the value to that precision. Query vectors that are not stored (an encoded text or image)
are rounded to float16 first (:func:`as_stored`), so a query scores exactly as it would if it were stored.

Blocked searches screen these values in a reduced precision (:mod:`facelake.vectors.gram`): float16 values
are exact in float32, so a float32 screen errs only by its accumulation; a bfloat16 screen also rounds the
inputs. :func:`screening_margin` bounds ``|screened − similarity|`` for the rows at hand.
"""

from __future__ import annotations

import numpy as np
import torch

from facelake.clip.layout import to_float16
from facelake.clusters.dbscan import float64_bound
from facelake.vectors.gram import GramBackend, pair_dots

_CHUNK = 1 << 16
_SLACK = 1e-12


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as stored vectors: float16 kept as is; anything else normalised and rounded to float16."""
    array = np.asarray(vectors)
    if array.ndim == 1:
        array = array[None, :]
    return array if array.dtype == np.float16 else to_float16(array)


def similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 ``[len(a), len(b)]`` similarities of two small sets of stored vectors."""
    return np.asarray(as_stored(a), np.float64) @ np.asarray(as_stored(b), np.float64).T


def pair_similarity(left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 ``similarity(left[rows[k]], right[cols[k]])`` for every k (``right`` may be ``left``)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    out = np.empty(len(rows), np.float64)
    for start in range(0, len(rows), _CHUNK):
        r, c = rows[start : start + _CHUNK], cols[start : start + _CHUNK]
        if right is left:
            index, inverse = np.unique(np.concatenate([r, c]), return_inverse=True)
            unit = np.asarray(left[index], np.float64)
            out[start : start + len(r)] = pair_dots(unit, inverse[: len(r)], inverse[len(r) :])
        else:
            out[start : start + len(r)] = np.einsum(
                "ij,ij->i", np.asarray(left[r], np.float64), np.asarray(right[c], np.float64)
            )
    return out


def max_norm(vectors: np.ndarray) -> float:
    """The largest row norm of stored vectors (float64), chunked."""
    largest = 0.0
    for start in range(0, len(vectors), _CHUNK):
        chunk = np.asarray(vectors[start : start + _CHUNK], np.float64)
        largest = max(largest, float(np.sqrt(np.einsum("ij,ij->i", chunk, chunk).max(initial=0.0))))
    return largest


def screening_margin(backend: GramBackend, dim: int, left_norm: float, right_norm: float) -> float:
    """Bound on ``|screened − similarity|`` for rows of norms at most ``left_norm`` and ``right_norm``: the
    backend's unit-vector bound scaled by the norms, plus float64's own rounding, plus a 1e-12 slack."""
    scale = max(1.0, left_norm) * max(1.0, right_norm)
    return backend.error_bound(dim) * scale + float64_bound(dim) * scale + _SLACK


def screen_copy(vectors: np.ndarray, backend: GramBackend) -> torch.Tensor:
    """Stored vectors in the backend's screening dtype and device, converted chunk by chunk."""
    out = torch.empty(vectors.shape, dtype=backend.screen_dtype, device=backend.device)
    for start in range(0, len(vectors), _CHUNK):
        chunk = torch.from_numpy(np.asarray(vectors[start : start + _CHUNK], np.float32))
        out[start : start + len(chunk)] = backend.prepare(chunk)
    return out
