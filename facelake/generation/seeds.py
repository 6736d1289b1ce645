"""Per-image randomness that depends on nothing but the image's name (HyperFace's generation step).

Image ``index`` of identity ``identity_id`` in ``variant`` gets two 63-bit seeds derived by sha256 from
(variant, identity_id, index, base seed): one for its initial latent noise (and any noise the scheduler draws
later, e.g. LCM's), one for its identity-embedding noise. Each image draws from its own CPU
``torch.Generator``, so an image is the same whether it is generated alone or inside any batch, on CPU or GPU
(up to the device's arithmetic).

The embedding noise is the paper's: ``x' = normalize(x + beta * n)``, ``n ~ N(0, I)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SEED_MASK = (1 << 63) - 1
_DOMAIN = b"facelake.generation.v1"


@dataclass(frozen=True)
class ImageSeeds:
    latent: int
    embedding: int


def image_seeds(variant: str, identity_id: str, index: int, base_seed: int = 0) -> ImageSeeds:
    """The two seeds of one image, stable across runs, machines and batch layouts."""
    message = b"\0".join(
        [
            _DOMAIN,
            variant.encode(),
            identity_id.encode(),
            str(int(index)).encode(),
            str(int(base_seed)).encode(),
        ]
    )
    digest = hashlib.sha256(message).digest()
    return ImageSeeds(
        latent=int.from_bytes(digest[:8], "little") & SEED_MASK,
        embedding=int.from_bytes(digest[8:16], "little") & SEED_MASK,
    )


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One freshly seeded CPU generator per seed."""
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def perturbed_embeddings(embeddings: np.ndarray, beta: float, seeds: Sequence[int]) -> np.ndarray:
    """``normalize(x_i + beta * n_i)`` with ``n_i ~ N(0, I)`` drawn from seed ``seeds[i]``; float32 ``[N, d]``.

    ``beta == 0`` returns the unit-normalised inputs unchanged (no draw).
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(seeds):
        raise ValueError(
            f"embeddings must be [N, d] with one seed per row, got {vectors.shape}, {len(seeds)}"
        )
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0:
        noise = torch.stack(
            [torch.randn(vectors.shape[1], generator=g, dtype=torch.float32) for g in generators(seeds)]
        )
        vectors = vectors + beta * noise.double().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("an identity embedding is zero or not finite: cannot normalise")
    return (vectors / norms).astype(np.float32)


def initial_latents(
    latent_generators: Sequence[torch.Generator], shape: tuple[int, int, int]
) -> torch.Tensor:
    """float32 ``[N, C, h, w]`` on CPU: one ``N(0, I)`` draw of ``shape`` per generator (advancing it)."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in latent_generators])
