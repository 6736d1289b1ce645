"""Batched open_clip image and text encoders, with image decoding on a worker pool that overlaps the model.

:meth:`ClipEncoder.stream` keeps ``prefetch`` batches decoding and preprocessing in a thread pool (PIL's
decoder and resampler release the GIL) while the model encodes the current batch, so on a GPU the model
never waits for the CPU and on a CPU the decode of batch i+1 fills the cores the model leaves idle.
Outputs are float32 unit rows ``[N, d]`` (L2-normalised in float32 after the model); writers store them as
float16 (:mod:`facelake.clip.layout`).

``jpeg_draft=True`` lets libjpeg decode large JPEGs at a reduced DCT scale (never below the model's input
size) before the transform: several times faster on big images (where decoding bounds a GPU), but the pixels,
hence the embeddings, differ slightly from a full decode, so it is part of :meth:`ClipEncoder.settings` and
off by default. Decode threads (:func:`default_workers`): every core up to 32 with a GPU, up to 8 on the CPU.

Precision (``precision``): ``auto`` is fp16 autocast on CUDA and float32 on the CPU; ``bf16`` autocast is
offered on both; the weights stay float32 (the space hash is of the float32 weights either way). Every
encoder of random weights carries :attr:`ClipEncoder.warning`.
"""

from __future__ import annotations

import io
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facelake.clip.model import LoadedClip
from facelake.lake.images import DECODE_ERRORS
from facelake.vectors.spaces import EmbedderProfile

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ImageInput = bytes | bytearray | memoryview | np.ndarray | Image.Image | str | os.PathLike


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(device: str) -> int:
    """Decode threads: every core on a GPU machine (the model runs elsewhere and decoding is the bottleneck),
    up to 8 on the CPU (the model's own threads share the cores)."""
    cores = os.cpu_count() or 1
    return max(1, min(32 if device.startswith("cuda") else 8, cores))


@dataclass
class EncodeStats:
    """Counts and seconds of an encoding run: ``decode_seconds`` is worker time summed over images (decode +
    preprocess), ``model_seconds`` the time in the model, ``wall_seconds`` the whole run."""

    images: int = 0
    failed: int = 0
    batches: int = 0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    wall_seconds: float = 0.0

    def add(self, other: EncodeStats) -> None:
        for name in ("images", "failed", "batches", "decode_seconds", "model_seconds", "wall_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        per = max(self.images, 1)
        return {
            "images": self.images,
            "failed": self.failed,
            "batches": self.batches,
            "images_per_second": round(self.images_per_second, 3),
            "decode_ms_per_image": round(1e3 * self.decode_seconds / per, 3),
            "model_ms_per_image": round(1e3 * self.model_seconds / per, 3),
            "wall_seconds": round(self.wall_seconds, 3),
        }


@dataclass
class EncodedBatch:
    """One batch of a stream: the items that encoded (in input order), their unit vectors and original image
    sizes ``[n, 2]`` (width, height), and the items whose image did not decode, with the reason."""

    items: list[Any]
    vectors: np.ndarray
    sizes: np.ndarray
    failed: list[tuple[Any, str]] = field(default_factory=list)


@dataclass
class _Prepared:
    tensor: torch.Tensor | None
    size: tuple[int, int]
    seconds: float
    error: str | None = None


class ClipEncoder:
    """Image and text embeddings of one loaded open_clip model (see the module doc)."""

    def __init__(
        self,
        loaded: LoadedClip,
        *,
        device: str | None = None,
        precision: str = "auto",
        batch_size: int = 64,
        decode_workers: int | None = None,
        prefetch: int = 2,
        jpeg_draft: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if batch_size < 1 or prefetch < 1:
            raise ValueError(f"batch_size and prefetch must be >= 1, got {batch_size}, {prefetch}")
        self.loaded = loaded
        self.device = str(device or default_device())
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("fp16 autocast is for CUDA; use fp32 or bf16 on the CPU")
        self.precision = precision
        self.batch_size = batch_size
        self.decode_workers = decode_workers or default_workers(self.device)
        self.prefetch = prefetch
        self.jpeg_draft = jpeg_draft
        self.model = loaded.model.to(self.device).eval()
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, tuple | list) else (int(size), int(size))

    # --- identity -------------------------------------------------------------------------------
    @property
    def profile(self) -> EmbedderProfile:
        return self.loaded.profile

    @property
    def dimension(self) -> int:
        return self.profile.dimension

    @property
    def warning(self) -> str | None:
        """The random-weights warning (None for trained weights)."""
        return self.loaded.warning

    def settings(self) -> dict[str, Any]:
        """What changes the numbers this encoder produces besides its space (stage config, metadata)."""
        return {
            "precision": self.precision,
            "jpeg_draft": self.jpeg_draft,
            "image_size": list(self.image_size),
        }

    # --- the model ------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return torch.autocast(self.device.split(":")[0], enabled=False)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.split(":")[0], dtype=dtype)

    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Unit float32 ``[n, d]`` of preprocessed image tensors ``[n, 3, H, W]``."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dimension), np.float32)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(batch.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 ``[n, d]`` of texts (tokenised by the model's own tokenizer), in batches."""
        out = [np.zeros((0, self.dimension), np.float32)]
        for start in range(0, len(texts), self.batch_size):
            tokens = self.loaded.tokenizer(list(texts[start : start + self.batch_size]))
            with torch.inference_mode(), self._autocast():
                features = self.model.encode_text(tokens.to(self.device))
            out.append(F.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Unit float32 ``[n, d]`` of images (bytes, paths, RGB arrays or PIL images); raises on one that does
        not decode (use :meth:`stream` to skip and report those instead)."""
        out = [np.zeros((0, self.dimension), np.float32)]
        for batch in self.stream(enumerate(images)):
            if batch.failed:
                index, reason = batch.failed[0]
                raise ValueError(f"image {index} does not decode: {reason}")
            out.append(batch.vectors)
        return np.concatenate(out)

    # --- decoding ---------------------------------------------------------------------------------
    def _open(self, data: ImageInput) -> tuple[Image.Image, tuple[int, int]]:
        if isinstance(data, Image.Image):
            return data.convert("RGB"), data.size
        if isinstance(data, np.ndarray):
            return Image.fromarray(data).convert("RGB"), (int(data.shape[1]), int(data.shape[0]))
        if isinstance(data, bytes | bytearray | memoryview):
            image = Image.open(io.BytesIO(data))
        else:
            image = Image.open(os.fspath(data))
        size = image.size
        if self.jpeg_draft and image.format == "JPEG":
            image.draft("RGB", self.image_size)
        return image.convert("RGB"), size

    def prepare(self, data: ImageInput) -> _Prepared:
        """Decode and preprocess one image (runs on the worker pool); a bad image gives ``error``."""
        started = time.perf_counter()
        try:
            image, size = self._open(data)
            tensor = self.loaded.preprocess(image)
        except DECODE_ERRORS as error:
            return _Prepared(None, (0, 0), time.perf_counter() - started, f"{type(error).__name__}: {error}")
        return _Prepared(tensor, size, time.perf_counter() - started)

    def stream(
        self, items: Iterable[tuple[Any, ImageInput]], stats: EncodeStats | None = None
    ) -> Iterator[EncodedBatch]:
        """Encode ``(item, image)`` pairs in batches of ``batch_size``, decoding ``prefetch`` batches ahead on
        ``decode_workers`` threads while the model runs; yields one :class:`EncodedBatch` per input batch."""
        stats = stats if stats is not None else EncodeStats()
        started, before = time.perf_counter(), stats.wall_seconds
        source = iter(items)
        pending: deque[list[tuple[Any, Future[_Prepared]]]] = deque()
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="clip-decode") as pool:

            def submit() -> None:
                chunk = list(islice(source, self.batch_size))
                if chunk:
                    pending.append([(item, pool.submit(self.prepare, data)) for item, data in chunk])

            for _ in range(self.prefetch):
                submit()
            while pending:
                group = pending.popleft()
                submit()
                done = [(item, future.result()) for item, future in group]
                good = [(item, p) for item, p in done if p.tensor is not None]
                failed = [(item, p.error or "") for item, p in done if p.tensor is None]
                stats.decode_seconds += sum(p.seconds for _, p in done)
                model_started = time.perf_counter()
                if good:
                    vectors = self.encode_tensors(torch.stack([p.tensor for _, p in good]))
                else:
                    vectors = np.zeros((0, self.dimension), np.float32)
                stats.model_seconds += time.perf_counter() - model_started
                stats.images += len(good)
                stats.failed += len(failed)
                stats.batches += 1
                sizes = np.array([p.size for _, p in good], np.int32).reshape(-1, 2)
                stats.wall_seconds = before + time.perf_counter() - started
                yield EncodedBatch([item for item, _ in good], vectors, sizes, failed)
        stats.wall_seconds = before + time.perf_counter() - started
