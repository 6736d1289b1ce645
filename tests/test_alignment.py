"""Five-point similarity alignment: exact recovery of known transforms, batch == single, clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from facelake.faces.alignment import (
    ARCFACE_TEMPLATE_112,
    align,
    alignment_transforms,
    apply_transforms,
    arcface_template,
)
from synthetic.face_photos import face_box, real_faces


def random_similarities(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random similarity matrices [n, 2, 3]: rotation ±180°, scale 0.3–5, translation ±500 px."""
    angle = rng.uniform(-np.pi, np.pi, n)
    scale = rng.uniform(0.3, 5.0, n)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    translation = rng.uniform(-500, 500, (n, 2))
    return np.stack(
        [np.stack([cos, -sin, translation[:, 0]], 1), np.stack([sin, cos, translation[:, 1]], 1)], 1
    )


@pytest.mark.parametrize("size", [112, 128, 256, (112, 96)])
def test_points_moved_by_a_known_similarity_map_back_to_the_template(size) -> None:
    rng = np.random.default_rng(7)
    template = arcface_template(size)
    moved = apply_transforms(random_similarities(rng, 200), np.broadcast_to(template, (200, 5, 2)))
    recovered = apply_transforms(alignment_transforms(moved, size), moved)
    assert np.abs(recovered - template).max() < 1e-3


def test_template_variants() -> None:
    assert np.allclose(arcface_template(112), ARCFACE_TEMPLATE_112)
    assert np.allclose(arcface_template(256), ARCFACE_TEMPLATE_112 * 256 / 112)
    # the classic 112x96 template is arcface_dst shifted 8 px left
    assert np.allclose(arcface_template((112, 96)), ARCFACE_TEMPLATE_112 - [8.0, 0.0])


def test_matches_scikit_image_similarity_estimate_on_noisy_landmarks() -> None:
    """insightface estimates with skimage's SimilarityTransform (Umeyama): same least-squares answer."""
    rng = np.random.default_rng(3)
    moved = apply_transforms(random_similarities(rng, 20), np.broadcast_to(ARCFACE_TEMPLATE_112, (20, 5, 2)))
    noisy = moved + rng.normal(0, 3.0, moved.shape)
    ours = alignment_transforms(noisy, 112)
    for points, matrix in zip(noisy, ours, strict=True):
        reference = SimilarityTransform.from_estimate(points, ARCFACE_TEMPLATE_112)
        assert np.allclose(matrix, reference.params[:2], atol=1e-8)


def test_never_reflects_mirrored_landmarks() -> None:
    mirrored = ARCFACE_TEMPLATE_112 * [-1.0, 1.0]
    (matrix,) = alignment_transforms(mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_batch_equals_one_by_one_on_real_photos() -> None:
    photos = real_faces()
    names = ["astronaut", "grace_hopper", "astronaut"]
    images = [photos[name] for name in names]
    landmarks = np.stack([face_box(name).landmarks for name in names])
    batch = align(images, landmarks, size=112)
    assert batch.shape == (3, 112, 112, 3) and batch.dtype == np.uint8
    for index, (image, points) in enumerate(zip(images, landmarks, strict=True)):
        assert np.array_equal(align([image], points[None])[0], batch[index])
    assert np.array_equal(
        alignment_transforms(landmarks), np.concatenate([alignment_transforms(p) for p in landmarks])
    )
    # the aligned face is not blank: the photo's face fills the 112x112 window
    assert (batch.reshape(3, -1, 3).std(axis=1) > 20).all()


@pytest.mark.parametrize("size", [112, 256, (112, 96)])
def test_warp_puts_marked_landmarks_on_the_template(size) -> None:
    """A dot drawn at each landmark of a tilted, scaled face lands on its template point after warping."""
    angle, scale = np.deg2rad(25.0), 1.7
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (ARCFACE_TEMPLATE_112 - 56.0) @ rotation.T + 150.0
    for point, target in zip(landmarks, arcface_template(size), strict=True):
        image = np.zeros((300, 300, 3), np.uint8)
        cv2.circle(
            image, (round(point[0] * 16), round(point[1] * 16)), 64, (255, 255, 255), -1, cv2.LINE_AA, 4
        )
        (aligned,) = align(image, landmarks[None], size=size)
        weight = aligned[..., 0].astype(float)
        ys, xs = np.indices(weight.shape)
        centroid = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
        assert np.abs(centroid - target).max() < 0.25


def test_one_shared_image_for_many_faces() -> None:
    image = real_faces()["astronaut"]
    points = face_box("astronaut").landmarks
    shared = align(image, np.stack([points, points + 1.0]))
    assert shared.shape == (2, 112, 112, 3)
    assert np.array_equal(shared[0], align([image], points[None])[0])


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.full((1, 5, 2), 40.0), "one point"),
        (np.where(np.arange(10).reshape(1, 5, 2) == 3, np.nan, 1.0 * np.arange(10).reshape(1, 5, 2)), "NaN"),
        (np.full((1, 5, 2), np.inf), "NaN or infinite"),
        (np.zeros((1, 4, 2)) + np.arange(4)[None, :, None], "five landmarks"),
        (np.zeros((2, 5, 3)), "shape"),
    ],
)
def test_degenerate_or_malformed_landmarks_raise_a_clear_value_error(landmarks, message) -> None:
    with pytest.raises(ValueError, match=message):
        alignment_transforms(landmarks)


def test_bad_images_raise_a_clear_value_error() -> None:
    points = face_box("astronaut").landmarks[None]
    with pytest.raises(ValueError, match="RGB uint8"):
        align([np.zeros((100, 100), np.uint8)], points)
    with pytest.raises(ValueError, match="2 images for 1 faces"):
        align([real_faces()["astronaut"]] * 2, points)
