"""Real face photos available offline, and deterministic varied JPEG crops of them with known face boxes.

Two different people ship with the installed packages (DESIGN §6): scikit-image's ``astronaut`` (Eileen
Collins) and matplotlib's ``grace_hopper.jpg``. Their face boxes and five landmarks were measured by hand
on the original pixels (approximate, a few pixels). Each crop keeps the whole face and reports where the box
and landmarks moved, so fixtures such as ``sample2detect`` can carry realistic detections.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageEnhance

# Landmark order is RetinaFace's (batch-face): left eye, right eye, nose, left mouth corner, right mouth
# corner, where "left" is the viewer's left (smaller x).
_FLIP_ORDER = [1, 0, 2, 4, 3]


@dataclass(frozen=True, eq=False)
class FaceAnnotation:
    """A face box ``x1, y1, x2, y2`` and five landmarks ``(x, y)``, in pixels of one image."""

    box: np.ndarray  # float32 [4]
    landmarks: np.ndarray  # float32 [5, 2]


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """One varied crop of a real photo: its JPEG bytes, size, and the face moved into its pixels."""

    jpeg: bytes
    width: int
    height: int
    box: np.ndarray  # float32 [4]
    landmarks: np.ndarray  # float32 [5, 2]
    source: str
    flipped: bool
    quality: int


PEOPLE = ("astronaut", "grace_hopper")
"""The two real people whose photos ship offline (scikit-image's astronaut, SciPy's Grace Hopper)."""

_ANNOTATIONS = {
    "astronaut": (
        (180.0, 72.0, 270.0, 182.0),
        ((203.0, 102.0), (247.0, 103.0), (226.0, 125.0), (201.0, 139.0), (246.0, 138.0)),
    ),
    "grace_hopper": (
        (165.0, 150.0, 370.0, 335.0),
        ((220.0, 195.0), (305.0, 190.0), (265.0, 237.0), (232.0, 280.0), (297.0, 277.0)),
    ),
}


def _grace_hopper() -> np.ndarray:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@cache
def _load(name: str) -> np.ndarray:
    loaders = {"astronaut": _astronaut, "grace_hopper": _grace_hopper}
    if name not in loaders:
        raise KeyError(f"unknown face photo {name!r}: expected one of {sorted(loaders)}")
    image = loaders[name]()
    image.setflags(write=False)
    return image


def real_faces() -> dict[str, np.ndarray]:
    """The offline real face photos by name, RGB uint8 (read-only arrays)."""
    return {name: _load(name) for name in _ANNOTATIONS}


def face_box(name: str) -> FaceAnnotation:
    """Hand-measured face box and five landmarks of photo ``name`` in its original pixels."""
    if name not in _ANNOTATIONS:
        raise KeyError(f"unknown face photo {name!r}: expected one of {sorted(_ANNOTATIONS)}")
    box, landmarks = _ANNOTATIONS[name]
    return FaceAnnotation(np.array(box, np.float32), np.array(landmarks, np.float32))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _crop_window(
    rng: np.random.Generator, size: tuple[int, int], box: np.ndarray, min_margin: float
) -> tuple[int, int, int, int]:
    """A random window ``x0, y0, x1, y1`` inside the image that contains the face box with some margin."""
    width, height = size
    face_w, face_h = box[2] - box[0], box[3] - box[1]
    crop_w = int(rng.uniform(min(width, face_w * min_margin), width))
    crop_h = int(np.clip(crop_w * rng.uniform(0.8, 1.25), min(height, face_h * min_margin), height))
    crop_w = max(crop_w, int(np.ceil(face_w)) + 2)
    crop_h = max(crop_h, int(np.ceil(face_h)) + 2)
    x_low, x_high = max(0, int(np.ceil(box[2])) - crop_w), min(int(box[0]), width - crop_w)
    y_low, y_high = max(0, int(np.ceil(box[3])) - crop_h), min(int(box[1]), height - crop_h)
    x0 = int(rng.integers(x_low, max(x_low, x_high) + 1))
    y0 = int(rng.integers(y_low, max(y_low, y_high) + 1))
    return x0, y0, x0 + crop_w, y0 + crop_h


def varied_crops(name: str, n: int, seed: int = 0, min_side: int = 96, max_side: int = 320) -> list[FaceCrop]:
    """``n`` deterministic varied JPEG crops of photo ``name``, each keeping the whole face.

    Varies the crop window, the scale (longest side in ``[min_side, max_side]``), a horizontal flip, the
    brightness and the JPEG quality; each crop reports the face box and landmarks in its own pixels.
    """
    image = Image.fromarray(_load(name))
    face = face_box(name)
    rng = np.random.default_rng([seed, len(name)])
    crops = []
    for _ in range(n):
        x0, y0, x1, y1 = _crop_window(rng, image.size, face.box, min_margin=1.4)
        longest = int(rng.integers(min_side, max_side + 1))
        scale = longest / max(x1 - x0, y1 - y0)
        out_w, out_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        crop = image.crop((x0, y0, x1, y1)).resize((out_w, out_h), Image.Resampling.BILINEAR)
        crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.75, 1.25)))
        sx, sy = out_w / (x1 - x0), out_h / (y1 - y0)
        box = (face.box - np.array([x0, y0, x0, y0], np.float32)) * np.array([sx, sy, sx, sy], np.float32)
        landmarks = (face.landmarks - np.array([x0, y0], np.float32)) * np.array([sx, sy], np.float32)
        flipped = bool(rng.random() < 0.5)
        if flipped:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            box = np.array([out_w - box[2], box[1], out_w - box[0], box[3]], np.float32)
            landmarks = np.stack([out_w - landmarks[:, 0], landmarks[:, 1]], axis=1)[_FLIP_ORDER]
        quality = int(rng.integers(60, 96))
        crops.append(
            FaceCrop(
                jpeg=encode_jpeg(np.asarray(crop), quality),
                width=out_w,
                height=out_h,
                box=box.astype(np.float32),
                landmarks=landmarks.astype(np.float32),
                source=name,
                flipped=flipped,
                quality=quality,
            )
        )
    return crops
