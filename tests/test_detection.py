"""RetinaFace detection on real photos with the imported mobilenet0.25 weights: faces found where annotated,
mixed-size batches equal to one-by-one, boxes in original pixels, batch-face's own post-processing, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from batch_face.face_detection.alignment import PriorBox, batch_detect, cfg_mnet
from PIL import Image

from facelake.faces.detection import (
    BACKBONES,
    Detections,
    FaceDetector,
    _anchors_cpu,
    build_retinaface,
    capped_size,
    flatten_detections,
    load_detector,
    size_batches,
)
from facelake.faces.detection_table import detection_arrays, detections_table
from facelake.lake.errors import InputError
from facelake.models.retinaface_import import import_retinaface_mobilenet
from synthetic.face_photos import face_box, real_faces, varied_crops

PHOTOS = ["astronaut", "grace_hopper"]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    import_retinaface_mobilenet(str(out))
    return out


@pytest.fixture(scope="module")
def detector(weights_dir: Path) -> FaceDetector:
    return load_detector(weights_dir)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def assert_finds_annotated_face(found: Detections, name: str) -> None:
    """One face, box IoU >= 0.5 with the hand annotation, each landmark within 10% of the face width."""
    truth = face_box(name)
    assert len(found) == 1, f"{name}: {len(found)} faces, scores {found.scores}"
    assert iou(found.boxes[0], truth.box) >= 0.5
    tolerance = 0.1 * (truth.box[2] - truth.box[0])
    distances = np.linalg.norm(found.landmarks[0] - truth.landmarks, axis=1)
    assert distances.max() <= tolerance, f"{name}: landmark errors {distances} > {tolerance}"


def decode(crop_jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(crop_jpeg)).convert("RGB"))


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("name", PHOTOS)
def test_finds_the_face_and_landmarks_on_real_photos(detector: FaceDetector, name: str) -> None:
    found = detector.detect([real_faces()[name]])[0]
    assert_finds_annotated_face(found, name)
    assert found.scores[0] > 0.99
    assert found.boxes.dtype == found.scores.dtype == np.float32 and found.landmarks.shape == (1, 5, 2)
    assert found.landmarks[0, 0, 0] < found.landmarks[0, 1, 0]  # left eye = viewer's left, as annotated


def test_equals_batch_face_own_postprocessing(detector: FaceDetector) -> None:
    """A single image (no resize, no padding) gives batch-face's batch_detect result, many candidates too."""
    low = FaceDetector(detector.network, device=detector.device, threshold=0.02)
    for image in real_faces().values():
        ours = low.detect([image])[0]
        theirs = batch_detect(low.network, [np.array(image)], device=low.device, threshold=0.02, cv=True)
        assert len(ours) == len(theirs[0]) > 1
        for index, (box, landmarks, score) in enumerate(theirs[0]):
            np.testing.assert_allclose(ours.boxes[index], box, atol=1e-3)
            np.testing.assert_allclose(ours.landmarks[index], landmarks, atol=1e-3)
            assert ours.scores[index] == pytest.approx(score, abs=1e-6)
        assert np.all(np.diff(ours.scores) <= 0)


def test_anchors_match_batch_face_priorbox() -> None:
    height, width = 100, 75  # odd sizes: feature maps are ceil(size / step)
    ours = _anchors_cpu(height, width, "mobilenet0.25")
    theirs = PriorBox(cfg_mnet, image_size=(height, width)).forward()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    expected = theirs * scale
    np.testing.assert_allclose(ours[:, :2], expected[:, :2], atol=1e-4)
    np.testing.assert_allclose(ours[:, 2], expected[:, 2], atol=1e-4)
    np.testing.assert_allclose(ours[:, 2], expected[:, 3], atol=1e-4)


def test_mixed_size_batch_equals_one_by_one(weights_dir: Path) -> None:
    detector = load_detector(weights_dir, max_side=400, batch_size=8)
    photos = real_faces()
    images = [photos["astronaut"], photos["grace_hopper"]]  # both above max_side: the cap applies
    images.append(photos["astronaut"][:470, :455])  # in the capped astronaut's 64-px cell: padded
    images += [decode(c.jpeg) for name in PHOTOS for c in varied_crops(name, 3, seed=7, max_side=260)]
    images.append(images[-1][:-9, :-5])  # padded next to its parent crop
    sizes = [capped_size(im.shape[0], im.shape[1], detector.max_side) for im in images]
    batches = size_batches(sizes, detector.batch_size)
    assert any(len({sizes[i] for i in batch}) > 1 for batch in batches), "no batch needed padding"

    batched = detector.detect(images)
    for image, together in zip(images, batched, strict=True):
        alone = detector.detect([image])[0]
        assert len(together) == len(alone) >= 1
        assert np.abs(together.boxes - alone.boxes).max() <= 1.0
        assert np.abs(together.landmarks - alone.landmarks).max() <= 1.0
        assert np.abs(together.scores - alone.scores).max() <= 0.01


def test_boxes_are_in_original_pixels(detector: FaceDetector, weights_dir: Path) -> None:
    astronaut = real_faces()["astronaut"]
    base = detector.detect([astronaut])[0]
    doubled = detector.detect([resized(astronaut, 1024, 1024)])[0]  # at max_side: no cap
    assert len(doubled) == 1
    assert iou(doubled.boxes[0] / 2, base.boxes[0]) > 0.9
    face_width = base.boxes[0, 2] - base.boxes[0, 0]
    assert np.abs(doubled.landmarks[0] / 2 - base.landmarks[0]).max() < 0.05 * face_width

    capped = load_detector(weights_dir, max_side=384)  # both photos are downscaled inside (0.75x, 0.64x)
    for name in PHOTOS:
        found = capped.detect([real_faces()[name]])[0]
        assert_finds_annotated_face(found, name)
        assert iou(found.boxes[0], detector.detect([real_faces()[name]])[0].boxes[0]) > 0.85


def test_flattened_results_feed_the_detections_table(detector: FaceDetector) -> None:
    blank = np.full((64, 80, 3), 127, np.uint8)
    photos = real_faces()
    results = detector.detect([photos["astronaut"], blank, photos["grace_hopper"]])
    assert len(results[1]) == 0
    assert results[1].boxes.shape == (0, 4) and results[1].landmarks.shape == (0, 5, 2)
    flat = flatten_detections(results, [11, 12, 13])
    assert flat.counts.tolist() == [1, 0, 1]
    assert flat.sample_ids.tolist() == [11, 13]
    arrays = detection_arrays(detections_table(flat.sample_ids, flat.boxes, flat.landmarks, flat.scores))
    np.testing.assert_array_equal(arrays["box"], np.concatenate([results[0].boxes, results[2].boxes]))
    np.testing.assert_array_equal(arrays["landmarks"][1], results[2].landmarks[0])
    assert detector.detect([]) == []


def test_device_is_chosen_by_the_detector_and_can_be_overridden(weights_dir: Path) -> None:
    assert load_detector(weights_dir).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    forced = load_detector(weights_dir, device="cpu")
    assert forced.device.type == "cpu" and next(forced.network.parameters()).device.type == "cpu"


def test_grey_and_rgba_inputs_and_bad_images(detector: FaceDetector) -> None:
    rgb = real_faces()["astronaut"][::2, ::2]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    found = detector.detect([grey, np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])])
    assert len(found[0]) == 1 and len(found[1]) == 1
    np.testing.assert_allclose(found[1].boxes, detector.detect([rgb])[0].boxes, atol=1e-3)
    with pytest.raises(InputError, match=r"^photo\.png: expected an RGB uint8 array \(H, W, 3\), got float"):
        detector.detect([rgb.astype(np.float32)], names=["photo.png"])
    with pytest.raises(InputError, match=r"^image 1: .*got shape \(0, 4, 3\)"):
        detector.detect([rgb, np.zeros((0, 4, 3), np.uint8)])


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_missing_weights_name_the_model_the_file_and_the_fix(tmp_path: Path, backbone: str) -> None:
    expected_file = BACKBONES[backbone].weights_filename
    fix = (
        "python -m facelake.models import retinaface-mobilenet --out DIR"
        if backbone == "mobilenet0.25"
        else "Resnet50_Final.pth"
    )
    for where in (tmp_path / "absent.pth", tmp_path):  # a file path, and a directory without the file
        with pytest.raises(InputError) as error:
            load_detector(where, backbone=backbone)
        message = str(error.value)
        assert f"RetinaFace {backbone} weights not found" in message
        assert expected_file in message and fix in message


def test_wrong_state_dict_is_a_clear_error(weights_dir: Path) -> None:
    with pytest.raises(InputError, match=r"not a RetinaFace resnet50 state dict: missing \d+ keys"):
        load_detector(weights_dir / BACKBONES["mobilenet0.25"].weights_filename, backbone="resnet50")
    with pytest.raises(ValueError, match="unknown RetinaFace backbone 'vgg'"):
        load_detector(weights_dir, backbone="vgg")


def test_resnet50_checkpoint_loads_and_runs(tmp_path: Path) -> None:
    """RANDOM weights (no resnet50 weights exist offline): a Resnet50_Final.pth-style DataParallel checkpoint
    loads into batch-face's resnet50 network and runs; only shapes are meaningful."""
    torch.manual_seed(0)
    random_network = build_retinaface("resnet50")
    state = {f"module.{k}": v for k, v in random_network.state_dict().items()}
    path = tmp_path / "random_init_resnet50_retinaface" / BACKBONES["resnet50"].weights_filename
    path.parent.mkdir()
    torch.save({"state_dict": state}, path)

    detector = load_detector(path.parent, backbone="resnet50", device="cpu", max_side=96)
    assert detector.name == "retinaface-resnet50"
    loaded = detector.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_network.state_dict().items())
    image = real_faces()["astronaut"][::4, ::4]  # 128 px, capped to 96
    with torch.inference_mode():
        loc, conf, landms = detector.network(torch.zeros(1, 3, 96, 96))
    anchors = (12 * 12 + 6 * 6 + 3 * 3) * 2
    assert (loc.shape, conf.shape, landms.shape) == ((1, anchors, 4), (1, anchors, 2), (1, anchors, 10))
    found = detector.detect([image, image[:90]])
    for result in found:
        assert result.boxes.shape == (len(result), 4) and result.landmarks.shape == (len(result), 5, 2)
        assert result.scores.dtype == np.float32 and np.all(result.scores > detector.threshold)
