"""Coordinates and the eye-line measures shared by the landmark and segmentation statistics.

Coordinates are continuous image coordinates in pixels: pixel (row r, column c) covers ``[c, c+1) x [r, r+1)``,
so a pixel's centre is ``(c + 0.5, r + 0.5)``, x to the right, y down. A region's centroid is the mean of its
pixels' centres; landmark points are read as they are stored.

The eye line joins the two eye centres ordered by x (the eye with the smaller x first), so it does not
depend on which label or landmark group is called "left": inter-ocular distance is its length and roll its
angle in degrees, in [-90, 90], positive when the eye with the larger x is lower in the image (the face is
turned clockwise as seen).
"""

from __future__ import annotations

import numpy as np


def eye_line(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inter-ocular distance, roll in degrees) of eye centres ``a`` and ``b`` (arrays; NaN propagates)."""
    ax, ay, bx, by = (np.asarray(v, np.float64) for v in (ax, ay, bx, by))
    swap = ax > bx
    lx, ly = np.where(swap, bx, ax), np.where(swap, by, ay)
    rx, ry = np.where(swap, ax, bx), np.where(swap, ay, by)
    dx, dy = rx - lx, ry - ly
    return np.hypot(dx, dy), np.degrees(np.arctan2(dy, dx))
