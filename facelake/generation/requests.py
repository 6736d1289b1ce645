"""Per-image generation requests: which identity, which image index, which seeds; and rendering them.

Image ``i`` of identity ``x`` is generated from ``x' = normalize(x + beta * n)`` and fresh latent noise, both
drawn from seeds derived from (variant, identity_id, i, seed) (:mod:`facelake.generation.seeds`), so any image
regenerates identically alone or in any batch. :func:`render` batches requests across identities.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from facelake.generation.generator import Arc2FaceGenerator
from facelake.generation.identities import ReferenceIdentities
from facelake.generation.seeds import image_seeds, perturbed_embeddings


@dataclass(frozen=True)
class ImageRequests:
    """Images to generate: per image, its identity row, index, and the two seeds derived from its name."""

    rows: np.ndarray  # int64, rows of the ReferenceIdentities
    index: np.ndarray  # int32, image index within its identity
    latent_seeds: np.ndarray  # int64
    embedding_seeds: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray | slice) -> ImageRequests:
        return ImageRequests(
            self.rows[positions],
            self.index[positions],
            self.latent_seeds[positions],
            self.embedding_seeds[positions],
        )


def plan_requests(
    identities: ReferenceIdentities, rows: np.ndarray, images_per_identity: int, seed: int = 0
) -> ImageRequests:
    """Images ``0..n-1`` of every identity in ``rows``, identity-major (the order within a shard)."""
    rows = np.repeat(np.asarray(rows, np.int64), images_per_identity)
    index = np.tile(np.arange(images_per_identity, dtype=np.int32), len(rows) // max(images_per_identity, 1))
    return requests_for(identities, rows, index, seed)


def requests_for(
    identities: ReferenceIdentities, rows: np.ndarray, index: np.ndarray, seed: int = 0
) -> ImageRequests:
    """Requests for arbitrary (identity row, image index) pairs: e.g. one image to regenerate alone."""
    rows, index = np.asarray(rows, np.int64), np.asarray(index, np.int32)
    seeds = [
        image_seeds(identities.variant, identities.identity_ids[r], int(i), seed)
        for r, i in zip(rows.tolist(), index.tolist(), strict=True)
    ]
    return ImageRequests(
        rows,
        index,
        np.asarray([s.latent for s in seeds], np.int64),
        np.asarray([s.embedding for s in seeds], np.int64),
    )


def conditioning_vectors(identities: ReferenceIdentities, requests: ImageRequests, beta: float) -> np.ndarray:
    """Each image's identity vector ``normalize(x + beta * n)``, float32 ``[len(requests), d]``."""
    return perturbed_embeddings(identities.embeddings[requests.rows], beta, requests.embedding_seeds.tolist())


@dataclass(frozen=True, eq=False)
class RenderedBatch:
    """One pipeline call's requests, conditioning vectors ``x'``, images and seconds."""

    requests: ImageRequests
    vectors: np.ndarray
    images: np.ndarray
    seconds: float


def render(
    generator: Arc2FaceGenerator,
    identities: ReferenceIdentities,
    requests: ImageRequests,
    beta: float,
    batch_size: int,
    *,
    output: Literal["uint8", "float"] = "uint8",
) -> Iterator[RenderedBatch]:
    """Generate ``requests`` in batches of ``batch_size`` (spanning identities), one pipeline call each."""
    vectors = conditioning_vectors(identities, requests, beta)
    for start in range(0, len(requests), batch_size):
        batch = requests.take(slice(start, start + batch_size))
        started = time.perf_counter()
        images = generator.generate(
            vectors[start : start + batch_size], batch.latent_seeds.tolist(), output=output
        )
        yield RenderedBatch(batch, vectors[start : start + batch_size], images, time.perf_counter() - started)
