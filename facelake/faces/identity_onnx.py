"""ArcFace identity embeddings (e.g. 512-d glintr100 of insightface's antelopev2, Arc2Face's arcface.onnx)
through onnxruntime, from a configured local ``.onnx`` file. No weights ship offline: nothing is downloaded.

Pre-processing follows insightface's ``ArcFaceONNX``: faces aligned to the ArcFace template at the model's
input size, RGB (insightface reads BGR and swaps), ``(pixel - 127.5) / 127.5`` (or mean 0, std 1 for
mxnet-converted graphs that normalise inside, detected as insightface does), NCHW float32. The input name
and size are read from the model; outputs are L2-normalised.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from facelake.faces.alignment import Images, align, face_batch
from facelake.faces.identity import EmbedderProfile, l2_normalise
from facelake.lake.errors import InputError
from facelake.lake.hashing import sha256_stream

log = logging.getLogger(__name__)

ARCFACE_SAME_IDENTITY_COSINE_DISTANCE = 0.35  # the CelebA-HQ clusters' DBSCAN eps on ArcFace embeddings
DEFAULT_INPUT_SIZE = (112, 112)


def _missing_model_error(name: str, path: Path) -> InputError:
    return InputError(
        str(path),
        f"ArcFace ONNX model {name!r} not found: expected the file {path}. No ArcFace weights ship offline; "
        "copy one from a machine that has it (e.g. insightface's antelopev2/glintr100.onnx or Arc2Face's "
        "arcface.onnx) to that path, or point the models registry's path for this model at it.",
    )


def insightface_normalisation(model_path: Path) -> tuple[float, float]:
    """``(mean, std)`` as insightface chooses: ``(0, 1)`` when the graph starts with its own Sub and Mul
    (mxnet conversions normalise inside), else ``(127.5, 127.5)``."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [node.name for node in graph.node[:8]]
    has_sub = any(name.startswith(("Sub", "_minus")) for name in names)
    has_mul = any(name.startswith(("Mul", "_mul")) for name in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _default_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _open_session(path: Path, name: str, providers: list[str] | None, threads: int):
    """An onnxruntime session and insightface's ``(mean, std)`` for the model file, or a clear InputError."""
    import onnxruntime

    if not path.is_file():
        raise _missing_model_error(name, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=providers or _default_providers()
        )
        return session, insightface_normalisation(path)
    except Exception as error:  # onnxruntime and onnx raise assorted types for a bad file
        raise InputError(str(path), f"not a loadable ONNX model for {name!r}: {error}") from error


class ArcFaceOnnxEmbedder:
    """ArcFace embeddings, L2-normalised float32 ``[N, d]``, from an ONNX model file."""

    def __init__(
        self,
        model_path: str | Path,
        name: str = "arcface_onnx",
        random_init: bool = False,
        same_identity_cosine_distance: float = ARCFACE_SAME_IDENTITY_COSINE_DISTANCE,
        batch_size: int = 64,
        channel_order: Literal["RGB", "BGR"] = "RGB",
        input_mean: float | None = None,
        input_std: float | None = None,
        providers: list[str] | None = None,
        threads: int = 0,
    ) -> None:
        path = Path(model_path)
        self._session, detected = _open_session(path, name, providers, threads)
        self._input = self._session.get_inputs()[0]
        self._output_name = self._session.get_outputs()[0].name
        shape = list(self._input.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise InputError(str(path), f"model {name!r} input must be NCHW with 3 channels, got {shape}")
        self.input_size = tuple(
            d if isinstance(d, int) else fallback
            for d, fallback in zip(shape[2:], DEFAULT_INPUT_SIZE, strict=True)
        )  # (height, width)
        fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.batch_size = fixed_batch or batch_size
        self.channel_order = channel_order
        self.input_mean = detected[0] if input_mean is None else input_mean
        self.input_std = detected[1] if input_std is None else input_std
        with path.open("rb") as stream:
            sha256 = sha256_stream(stream)
        self.profile = EmbedderProfile(
            name=name,
            dimension=self._output_dimension(),
            weights_sha256=sha256,
            random_init=random_init,
            same_identity_cosine_distance=same_identity_cosine_distance,
            note=(
                f"onnx input {self._input.name} {shape}, {channel_order}, mean {self.input_mean}, "
                f"std {self.input_std}" + ("; RANDOM TEST WEIGHTS" if random_init else "")
            ),
        )
        level = logging.WARNING if random_init else logging.INFO
        log.log(level, "loaded identity embedder %s from %s", self.profile.describe(), path)

    def _output_dimension(self) -> int:
        shape = self._session.get_outputs()[0].shape
        if len(shape) == 2 and isinstance(shape[1], int):
            return shape[1]
        return int(np.prod(self._run(np.zeros((1, 3, *self.input_size), dtype=np.float32)).shape[1:]))

    def _run(self, blob: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input.name: blob})[0]

    def _blob(self, faces: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(faces).astype(np.float32)
        if self.channel_order == "BGR":
            batch = batch[..., ::-1]
        batch = (batch - self.input_mean) / self.input_std
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def embed_aligned(self, faces: Images) -> np.ndarray:
        """Embeddings ``[N, d]`` of RGB uint8 faces aligned to the ArcFace template at the model's input size."""
        chips = face_batch(faces)
        for index, chip in enumerate(chips):
            if chip.shape[:2] != self.input_size:
                raise ValueError(
                    f"aligned face {index} must be {self.input_size} (H, W), got {chip.shape[:2]}"
                )
        step = self.batch_size
        outputs = [self._run(self._blob(chips[start : start + step])) for start in range(0, len(chips), step)]
        if not outputs:
            return np.zeros((0, self.profile.dimension), dtype=np.float32)
        return l2_normalise(np.concatenate(outputs).reshape(len(chips), -1))

    def embed(self, images: Images, boxes: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Embeddings ``[N, d]`` of faces given by their five landmarks ``[N, 5, 2]`` (``boxes`` unused)."""
        if landmarks is None:
            raise ValueError(f"{self.profile.name} aligns by five landmarks: pass landmarks [N, 5, 2]")
        return self.embed_aligned(align(images, landmarks, size=self.input_size))
