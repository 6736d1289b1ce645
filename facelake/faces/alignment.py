"""Five-point face alignment to the ArcFace template, vectorised over a batch of faces.

A face's five landmarks (RetinaFace order: left eye, right eye, nose, left and right mouth corner, "left"
meaning the viewer's left) are mapped onto insightface's ``arcface_dst`` template by the least-squares
similarity transform (rotation, uniform scale, translation; never a reflection), then the image is warped
with ``cv2.warpAffine``. This is what insightface's ``face_align.norm_crop`` does face by face; here the N
transforms are estimated at once in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: insightface's ``arcface_dst``: where the five landmarks land in a 112x112 aligned face.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

Size = int | tuple[int, int]
Images = np.ndarray | Sequence[np.ndarray]

_MIN_SPREAD_PX2 = 1e-6  # landmark sets whose summed squared spread is below this are degenerate


def output_shape(size: Size) -> tuple[int, int]:
    """``(height, width)`` of an aligned face: ``size`` is an int (square) or ``(height, width)``."""
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"aligned face size must be positive, got {size!r}")
    return int(height), int(width)


def arcface_template(size: Size = 112) -> np.ndarray:
    """The five template points ``[5, 2]`` (x, y) for an aligned face of ``size``.

    The 112x112 template is scaled by ``height / 112`` and centred horizontally, so ``size=(112, 96)``
    gives the classic 112x96 (SphereFace/CosFace) template, i.e. ``arcface_dst - (8, 0)``. Note that
    insightface's own 128 variant instead keeps the 112 scale and shifts x by 8; use 112 for its models.
    """
    height, width = output_shape(size)
    scale = height / 112.0
    template = ARCFACE_TEMPLATE_112 * scale
    template[:, 0] += (width - 112.0 * scale) / 2.0
    return template


def _landmark_batch(landmarks: np.ndarray) -> np.ndarray:
    """Validate landmarks into float64 ``[N, K, 2]`` (a single ``[K, 2]`` set becomes N=1)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[1] < 2:
        raise ValueError(f"landmarks must have shape [N, K>=2, 2], got {np.shape(landmarks)}")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"landmarks of face(s) {bad[:10].tolist()} contain NaN or infinite values")
    return points


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms ``[N, 2, 3]`` mapping each ``src[i]`` (``[N, K, 2]``) onto ``dst``.

    ``dst`` is ``[K, 2]`` (one template for all) or ``[N, K, 2]``. This is Umeyama's estimate restricted to
    proper rotations, in its 2-D closed form: with centred points as complex numbers, the rotation-scale is
    ``z = sum(conj(s) d) / sum(|s|^2)``. Raises ``ValueError`` for NaN/inf or degenerate point sets.
    """
    source = _landmark_batch(src)
    target = np.broadcast_to(np.asarray(dst, dtype=np.float64), source.shape)
    if not np.isfinite(target).all():
        raise ValueError("destination points contain NaN or infinite values")
    src_mean, dst_mean = source.mean(axis=1), target.mean(axis=1)
    s, d = source - src_mean[:, None], target - dst_mean[:, None]
    spread = (s**2).sum(axis=(1, 2))
    degenerate = np.flatnonzero(spread < _MIN_SPREAD_PX2)
    if degenerate.size:
        raise ValueError(
            f"landmarks of face(s) {degenerate[:10].tolist()} are (nearly) one point: no transform exists"
        )
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(axis=1) / spread
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(axis=1) / spread
    collapsed = np.flatnonzero(a**2 + b**2 < 1e-12)
    if collapsed.size:
        raise ValueError(f"landmarks of face(s) {collapsed[:10].tolist()} do not fit the template at all")
    rotation = np.stack([np.stack([a, -b], axis=1), np.stack([b, a], axis=1)], axis=1)  # [N, 2, 2]
    translation = dst_mean - np.einsum("nij,nj->ni", rotation, src_mean)
    return np.concatenate([rotation, translation[..., None]], axis=2)


def alignment_transforms(landmarks: np.ndarray, size: Size = 112) -> np.ndarray:
    """Affine matrices ``[N, 2, 3]`` taking each face's five landmarks ``[N, 5, 2]`` to the template."""
    points = _landmark_batch(landmarks)
    if points.shape[1] != 5:
        raise ValueError(f"alignment needs five landmarks per face, got shape {np.shape(landmarks)}")
    return estimate_similarity(points, arcface_template(size))


def apply_transforms(transforms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply affine matrices ``[N, 2, 3]`` to points ``[N, K, 2]``."""
    matrices, xy = np.asarray(transforms, np.float64), np.asarray(points, np.float64)
    return np.einsum("nij,nkj->nki", matrices[:, :, :2], xy) + matrices[:, None, :, 2]


def _checked_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    for index, image in enumerate(images):
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image {index} must be an RGB uint8 array [H, W, 3], got {got}")
    return list(images)


def face_batch(faces: Images) -> list[np.ndarray]:
    """Validated RGB uint8 face images from one ``[H, W, 3]`` array, an ``[N, H, W, 3]`` array or a list."""
    if isinstance(faces, np.ndarray) and faces.ndim == 3:
        faces = [faces]
    return _checked_images(faces)


def images_per_face(images: Images, count: int) -> list[np.ndarray]:
    """One RGB uint8 ``[H, W, 3]`` image per face: a single image is shared by all ``count`` faces."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images] * count
    if len(images) != count:
        raise ValueError(f"got {len(images)} images for {count} faces: pass one image per face, or one image")
    return _checked_images(images)


def align(images: Images, landmarks: np.ndarray, size: Size = 112, border_value: int = 0) -> np.ndarray:
    """Aligned faces ``[N, H, W, 3]`` uint8 from images (one per face, or one shared) and landmarks ``[N, 5, 2]``.

    Bilinear ``cv2.warpAffine`` with a constant border, as insightface's ``norm_crop``.
    """
    transforms = alignment_transforms(landmarks, size)
    height, width = output_shape(size)
    sources = images_per_face(images, len(transforms))
    aligned = np.empty((len(transforms), height, width, 3), dtype=np.uint8)
    for index, (image, matrix) in enumerate(zip(sources, transforms, strict=True)):
        aligned[index] = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(border_value,) * 3
        )
    return aligned
