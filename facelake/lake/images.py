"""Decoding image bytes: one definition of what a bad image raises."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
"""What PIL raises on bytes that are not a decodable image."""


def decode_rgb(data: bytes) -> np.ndarray:
    """Image bytes -> writable RGB uint8 array (h, w, 3) as stored (no EXIF rotation); raises if bad."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))  # writable, unlike np.asarray of a PIL image


def decode_or_none(data: bytes) -> np.ndarray | None:
    """:func:`decode_rgb`, or None when the bytes are not a decodable image."""
    try:
        return decode_rgb(data)
    except DECODE_ERRORS:
        return None
