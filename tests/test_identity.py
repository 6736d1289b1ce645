"""Identity embedders: dlib's real weights on real photos, the ArcFace ONNX loader on a test-built model
(RANDOM TEST WEIGHTS), provenance and the refusal to mix embedding spaces."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facelake.faces.alignment import align
from facelake.faces.identity import (
    EmbeddingSpaceMismatchError,
    check_same_space,
    embedding_table,
    table_embeddings,
    table_space,
)
from facelake.faces.identity_dlib import DlibEmbedder
from facelake.faces.identity_onnx import ArcFaceOnnxEmbedder, insightface_normalisation
from facelake.lake.errors import InputError
from synthetic.arcface_tiny import build_test_arcface, expected_test_arcface
from synthetic.face_photos import PEOPLE, encode_jpeg, face_box, real_faces, varied_crops


@pytest.fixture(scope="module")
def dlib_embedder() -> DlibEmbedder:
    return DlibEmbedder()


def flipped(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = image.shape[1]
    return np.ascontiguousarray(image[:, ::-1]), np.array([width - box[2], box[1], width - box[0], box[3]])


def cropped(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A window with a 40% margin around the face, resized by 0.8 (so the pixels really change)."""
    margin = 0.4 * (box[2:] - box[:2])
    x0, y0 = np.maximum(box[:2] - margin, 0).astype(int)
    x1, y1 = np.minimum(box[2:] + margin, image.shape[1::-1]).astype(int)
    window = Image.fromarray(image[y0:y1, x0:x1])
    size = (round(window.width * 0.8), round(window.height * 0.8))
    scale = np.array([size[0] / window.width, size[1] / window.height] * 2)
    return np.asarray(window.resize(size, Image.Resampling.BILINEAR)), (box - [x0, y0, x0, y0]) * scale


def half_size(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small = Image.fromarray(image).resize(
        (image.shape[1] // 2, image.shape[0] // 2), Image.Resampling.BILINEAR
    )
    return np.asarray(small), box / 2


def jpeg_q40(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(Image.open(io.BytesIO(encode_jpeg(image, quality=40))).convert("RGB")), box


def brighter(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(image * 1.3, 0, 255).astype(np.uint8), box


def darker(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (image * 0.7).astype(np.uint8), box


VARIATIONS = [flipped, cropped, half_size, jpeg_q40, brighter, darker]


def photo(name: str, variation=None) -> tuple[np.ndarray, np.ndarray]:
    image, box = real_faces()[name], face_box(name).box
    return (image, box) if variation is None else variation(image, box)


def embed_photo(embedder, name: str, variation=None) -> np.ndarray:
    image, box = photo(name, variation)
    return embedder.embed(image, box[None])[0]


def raw_photo(embedder, name: str, variation=None) -> np.ndarray:
    image, box = photo(name, variation)
    return embedder.raw_descriptors(image, box[None])[0]


@pytest.mark.parametrize("name", PEOPLE)
@pytest.mark.parametrize("variation", VARIATIONS, ids=lambda v: v.__name__)
def test_dlib_same_face_stays_close_under_flip_crop_scale_jpeg_brightness(
    dlib_embedder, name, variation
) -> None:
    original = embed_photo(dlib_embedder, name)
    varied = embed_photo(dlib_embedder, name, variation)
    distance = float(np.linalg.norm(original - varied))
    assert distance < 0.3
    assert distance < dlib_embedder.profile.same_identity_l2
    # dlib's own space, where its thresholds are defined: the same face stays closer than 0.4
    raw_distance = np.linalg.norm(raw_photo(dlib_embedder, name) - raw_photo(dlib_embedder, name, variation))
    assert raw_distance < 0.4


def test_dlib_different_people_are_far_apart_and_vectors_are_unit(dlib_embedder) -> None:
    astronaut, hopper = (embed_photo(dlib_embedder, name) for name in PEOPLE)
    for vector in (astronaut, hopper):
        assert vector.dtype == np.float32 and vector.shape == (128,)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-6
    distance = float(np.linalg.norm(astronaut - hopper))
    # measured 0.478 on unit vectors (0.686 on dlib's raw descriptors, whose norm is ~1.4)
    assert distance > 0.45
    # dlib's own space, where its 0.6 threshold is defined: two different people are farther than 0.6
    raw_astronaut, raw_hopper = (raw_photo(dlib_embedder, name) for name in PEOPLE)
    assert np.linalg.norm(raw_astronaut - raw_hopper) > 0.6
    for raw, unit in ((raw_astronaut, astronaut), (raw_hopper, hopper)):
        assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)  # the stored vector is raw, normalised
    assert distance > dlib_embedder.profile.same_identity_l2
    cosine_distance = 1.0 - float(astronaut @ hopper)
    assert cosine_distance == pytest.approx(distance**2 / 2, abs=1e-6)


@pytest.mark.parametrize("name", PEOPLE)
def test_dlib_varied_jpeg_crops_match_their_own_person_only(dlib_embedder, name) -> None:
    """Random crop, scale, flip, brightness and JPEG quality together (the sample2detect fixture crops)."""
    crops = varied_crops(name, 4, seed=2, min_side=160)
    images = [np.asarray(Image.open(io.BytesIO(crop.jpeg)).convert("RGB")) for crop in crops]
    vectors = dlib_embedder.embed(images, np.stack([crop.box for crop in crops]))
    threshold = dlib_embedder.profile.same_identity_l2
    other = next(person for person in PEOPLE if person != name)
    assert (np.linalg.norm(vectors - embed_photo(dlib_embedder, name), axis=1) < 0.3).all()
    assert (np.linalg.norm(vectors - embed_photo(dlib_embedder, other), axis=1) > threshold).all()


def test_dlib_batched_equals_one_by_one_and_shared_image_works(dlib_embedder) -> None:
    photos = real_faces()
    images = [photos[name] for name in [*PEOPLE, "astronaut"]]
    boxes = np.stack([face_box(name).box for name in [*PEOPLE, "astronaut"]])
    batch = dlib_embedder.embed(images, boxes)
    assert batch.shape == (3, 128) and batch.dtype == np.float32
    singles = np.concatenate(
        [dlib_embedder.embed([image], box[None]) for image, box in zip(images, boxes, strict=True)]
    )
    assert np.allclose(batch, singles, atol=1e-5)
    assert np.array_equal(batch[0], batch[2])
    shared = dlib_embedder.embed(photos["astronaut"], np.stack([boxes[0], boxes[0] + 2]))
    assert np.allclose(shared[0], batch[0], atol=1e-5)
    assert dlib_embedder.embed(photos["astronaut"], np.zeros((0, 4))).shape == (0, 128)


def test_dlib_profile_and_errors(dlib_embedder, tmp_path) -> None:
    profile = dlib_embedder.profile
    assert profile.dimension == 128 and not profile.random_init and len(profile.weights_sha256) == 64
    assert 0.05 < profile.same_identity_cosine_distance < 0.18
    assert "trained weights" in profile.describe()
    with pytest.raises(ValueError, match="150x150"):
        dlib_embedder.embed_aligned(np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        dlib_embedder.embed(real_faces()["astronaut"], np.zeros((1, 5)))
    missing = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    with pytest.raises(InputError, match="face recognition model not found") as error:
        DlibEmbedder(model_path=missing)
    assert str(missing) in str(error.value)


# ---- ArcFace ONNX loader, exercised on a test-built model with RANDOM TEST WEIGHTS ----


@pytest.fixture(scope="module")
def aligned_faces() -> np.ndarray:
    photos = real_faces()
    names = [*PEOPLE, "astronaut", "grace_hopper", "astronaut"]
    landmarks = np.stack([face_box(name).landmarks for name in names])
    landmarks[2:] += np.random.default_rng(0).normal(0, 2.0, landmarks[2:].shape)
    return align([photos[name] for name in names], landmarks, size=112)


@pytest.fixture
def test_arcface(tmp_path) -> tuple[ArcFaceOnnxEmbedder, dict[str, np.ndarray]]:
    path = tmp_path / "tiny_arcface.onnx"
    weights = build_test_arcface(path)
    return ArcFaceOnnxEmbedder(path, name="tiny_arcface_test", random_init=True, batch_size=2), weights


def test_onnx_embedder_runs_batched_with_insightface_preprocessing(test_arcface, aligned_faces) -> None:
    embedder, weights = test_arcface
    vectors = embedder.embed_aligned(aligned_faces)
    assert vectors.shape == (5, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(vectors, expected_test_arcface(weights, aligned_faces), atol=1e-5)
    singles = np.concatenate([embedder.embed_aligned(face) for face in aligned_faces])
    assert np.allclose(vectors, singles, atol=1e-6)


def test_onnx_embedder_aligns_from_landmarks(test_arcface) -> None:
    embedder, _ = test_arcface
    photos = real_faces()
    landmarks = np.stack([face_box(name).landmarks for name in PEOPLE])
    images = [photos[name] for name in PEOPLE]
    direct = embedder.embed(images, np.zeros((2, 4)), landmarks)
    assert np.array_equal(direct, embedder.embed_aligned(align(images, landmarks, 112)))
    with pytest.raises(ValueError, match="five landmarks"):
        embedder.embed(images, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(112, 112\)"):
        embedder.embed_aligned(np.zeros((2, 128, 128, 3), np.uint8))


def test_onnx_profile_says_random_test_weights(test_arcface, tmp_path) -> None:
    embedder, _ = test_arcface
    profile = embedder.profile
    assert (profile.name, profile.dimension, profile.random_init) == ("tiny_arcface_test", 512, True)
    assert profile.same_identity_cosine_distance == 0.35
    assert "RANDOM TEST WEIGHTS" in profile.describe() and "RANDOM TEST WEIGHTS" in profile.note
    assert profile.provenance()["embedder_random_init"] is True
    assert profile.weights_sha256 == hashlib.sha256((tmp_path / "tiny_arcface.onnx").read_bytes()).hexdigest()


def test_onnx_fixed_batch_one_model_and_mxnet_normalisation(tmp_path, aligned_faces) -> None:
    plain, mxnet = tmp_path / "plain.onnx", tmp_path / "mxnet.onnx"
    weights = build_test_arcface(plain, batch=1)
    build_test_arcface(mxnet, mxnet_style=True)
    assert insightface_normalisation(plain) == (127.5, 127.5)
    assert insightface_normalisation(mxnet) == (0.0, 1.0)
    fixed = ArcFaceOnnxEmbedder(plain, random_init=True)
    assert fixed.batch_size == 1
    expected = expected_test_arcface(weights, aligned_faces)
    assert np.allclose(fixed.embed_aligned(aligned_faces), expected, atol=1e-5)
    inside = ArcFaceOnnxEmbedder(mxnet, random_init=True)
    assert (inside.input_mean, inside.input_std) == (0.0, 1.0)
    assert np.allclose(inside.embed_aligned(aligned_faces), expected, atol=1e-5)


def test_onnx_missing_or_corrupt_file_gives_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "models" / "glintr100.onnx"
    with pytest.raises(InputError) as error:
        ArcFaceOnnxEmbedder(missing, name="arcface_glintr100")
    message = str(error.value)
    assert "'arcface_glintr100' not found" in message and str(missing) in message and "copy" in message
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a loadable ONNX model"):
        ArcFaceOnnxEmbedder(corrupt)


# ---- provenance and embedding spaces ----


def test_check_same_space_refuses_dlib_vs_arcface(dlib_embedder, test_arcface) -> None:
    arcface, _ = test_arcface
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"dlib_resnet_v1.*tiny_arcface_test.*RANDOM"):
        check_same_space([dlib_embedder.profile, arcface.profile])
    same = check_same_space([dlib_embedder.profile, dlib_embedder.profile.provenance()])
    assert same["embedder_name"] == "dlib_resnet_v1"
    other_weights = {**arcface.profile.provenance(), "embedder_weights_sha256": "0" * 64}
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"tiny_arcface_test.*tiny_arcface_test"):
        check_same_space([arcface.profile, other_weights])


def test_embedding_rows_carry_provenance_through_parquet(
    dlib_embedder, test_arcface, aligned_faces, tmp_path
) -> None:
    vectors = dlib_embedder.embed(real_faces()["astronaut"], face_box("astronaut").box[None])
    table = embedding_table(vectors, dlib_embedder.profile, {"face_id": ["astronaut"]})
    pq.write_table(table, tmp_path / "emb.parquet")
    back = pq.read_table(tmp_path / "emb.parquet")
    assert back.column("face_id").to_pylist() == ["astronaut"]
    assert np.array_equal(table_embeddings(back), vectors)
    assert table_space(back) == dlib_embedder.profile.provenance()
    arcface, _ = test_arcface
    mixed = pa.concat_tables(
        [
            back,
            embedding_table(arcface.embed_aligned(aligned_faces[:1]), arcface.profile, {"face_id": ["x"]}),
        ],
        promote_options="permissive",
    )
    with pytest.raises(EmbeddingSpaceMismatchError):
        table_space(mixed)
    with pytest.raises(ValueError, match=r"\[N, 512\]"):
        embedding_table(vectors, arcface.profile)
