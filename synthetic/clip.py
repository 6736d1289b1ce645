"""Fixture builders for the CLIP stages: a tiny open_clip config, textured JPEGs, clustered unit vectors with
text-like queries, and float16 vectors with near-duplicate pairs planted at chosen similarities.

No CLIP weights exist offline (DESIGN §6): tests register :data:`TINY_CONFIG` with open_clip and exercise the
real loading path with random weights saved as a checkpoint.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TINY_NAME = "facelake-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
"""A ViT of width 64, 2 layers, 32 px images (8 px patches), and a 2-layer text tower of width 32 over the
standard 77-token BPE context: 32-d embeddings, ~1.7M parameters (mostly the token embedding)."""


def register_tiny_config(folder: str | Path, name: str = TINY_NAME, **changes: object) -> str:
    """Write :data:`TINY_CONFIG` (updated with ``changes`` at the top level) as ``<folder>/<name>.json`` and
    register it with open_clip; returns the config name."""
    import open_clip

    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**TINY_CONFIG, **changes}))
    open_clip.add_model_config(path)
    return name


def textured_jpegs(n: int, size: tuple[int, int] = (64, 48), seed: int = 0, quality: int = 90) -> list[bytes]:
    """``n`` distinct JPEGs of ``size`` (width, height): smooth colour gradients with a few random blobs."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(n):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-2, 2, (2, 3))
        image = base + x[..., None] * slope[0] + y[..., None] * slope[1]
        for _ in range(3):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, max(4, width / 4))
            mask = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
            image[mask] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 8, image.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
        images.append(buffer.getvalue())
    return images


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Clustered:
    """``vectors`` float32 unit ``[centres × per_centre, dim]``, their ``labels`` and the ``centres``."""

    vectors: np.ndarray
    labels: np.ndarray
    centres: np.ndarray


def clustered_unit_vectors(
    centres: int, per_centre: int, dim: int = 512, *, intra: float = 0.5, seed: int = 0
) -> Clustered:
    """Points around random centres: ``normalise(sqrt(intra)·c + sqrt(1 − intra)·g)``, ``g`` a random unit
    direction, so two points of one centre have cosine ≈ ``intra`` and points of different centres ≈ 0."""
    rng = np.random.default_rng(seed)
    middle = _unit(rng.standard_normal((centres, dim))).astype(np.float32)
    labels = np.repeat(np.arange(centres), per_centre)
    out = np.empty((centres * per_centre, dim), np.float32)
    step = max(1, 65536 // per_centre)
    for start in range(0, centres, step):
        ids = labels[start * per_centre : (start + step) * per_centre]
        noise = _unit(rng.standard_normal((len(ids), dim)))
        out[start * per_centre : start * per_centre + len(ids)] = _unit(
            math.sqrt(intra) * middle[ids] + math.sqrt(1 - intra) * noise
        )
    return Clustered(out, labels, middle)


def text_like_queries(
    data: Clustered, count: int, *, match: float = 0.45, gap: float = 0.85, seed: int = 1, cone_seed: int = 7
) -> np.ndarray:
    """Unit queries shaped like CLIP text embeddings against image embeddings, float32 ``[count, dim]``:
    ``normalise(match·c + gap·t + noise·g)`` with ``c`` a random centre, ``t`` ONE fixed direction shared by
    every query (the text cone: CLIP's "modality gap" puts all text embeddings in a cone away from the
    images'), ``g`` random and ``noise = sqrt(1 − match² − gap²)``. A query then has similarity
    ≈ ``match·sqrt(intra)`` (≈ 0.3) to the points of its centre and ≈ 0 ± 0.03 to the rest, as text-image
    matches do. ``gap=0`` gives the harsher isotropic model (all of the non-matching part random)."""
    rng = np.random.default_rng(seed)
    dim = data.centres.shape[1]
    cone = _unit(np.random.default_rng(cone_seed).standard_normal(dim))
    noise_weight = math.sqrt(max(0.0, 1 - match**2 - gap**2))
    picked = data.centres[rng.integers(0, len(data.centres), count)]
    noise = _unit(rng.standard_normal((count, dim)))
    return _unit(match * picked + gap * cone + noise_weight * noise).astype(np.float32)


def _pair_at(anchor: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """A float16 vector whose float64 dot with ``anchor`` (float16) lies strictly inside (low, high)."""
    a = anchor.astype(np.float64)
    target = (low + high) / 2
    u = rng.standard_normal(len(a))
    u -= (u @ a) / (a @ a) * a
    u /= np.linalg.norm(u)
    b = (target / np.linalg.norm(a)) * (a / np.linalg.norm(a)) + math.sqrt(max(0.0, 1 - target**2)) * u
    half = b.astype(np.float16)
    for _ in range(200_000):
        value = float(half.astype(np.float64) @ a)
        if low < value < high:
            return half
        up = value <= low
        k = int(rng.integers(len(a)))
        if a[k] == 0:
            continue
        toward = np.float16(np.inf) if (a[k] > 0) == up else np.float16(-np.inf)
        half[k] = np.nextafter(half[k], toward)
    raise RuntimeError(f"could not plant a pair in ({low}, {high})")


@dataclass(frozen=True)
class Planted:
    """float16 ``vectors`` with planted pairs: ``above`` (similarity > threshold) and ``below`` (≤), as
    ``(i, j)`` row pairs with ``i < j``; ``sizes`` [N, 2] a width/height per row."""

    vectors: np.ndarray
    above: list[tuple[int, int]]
    below: list[tuple[int, int]]
    sizes: np.ndarray


def random_unit_float16(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """``n`` random unit rows rounded to float16, generated in chunks (a million rows never need float64)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float16)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        out[start : start + rows] = _unit(rng.standard_normal((rows, dim), dtype=np.float32))
    return out


def planted_near_duplicates(
    n: int,
    dim: int = 512,
    threshold: float = 0.92,
    *,
    base: np.ndarray | None = None,
    knife: float = 1e-5,
    knife_pairs: int = 4,
    clear_pairs: int = 6,
    chain: int = 3,
    seed: int = 0,
) -> Planted:
    """Random float16 unit rows (pairwise similarity ≈ 0 ± 0.05 at d=512; or ``base``, float16, changed in
    place) with pairs planted at chosen similarities: ``knife_pairs`` just above and just below the threshold
    (within ``knife``, after float16 rounding), ``clear_pairs`` clearly above (0.95–0.99) and clearly below
    (0.86–0.9), and a chain of ``chain`` rows each just above the threshold to the next (one group, not all
    pairs above)."""
    rng = np.random.default_rng(seed)
    vectors = random_unit_float16(n, dim, seed) if base is None else base
    n, dim = vectors.shape
    free = iter(rng.permutation(n).tolist())
    above: list[tuple[int, int]] = []
    below: list[tuple[int, int]] = []

    def plant(low: float, high: float, anchor: int | None = None) -> tuple[int, int]:
        i = next(free) if anchor is None else anchor
        j = next(free)
        vectors[j] = _pair_at(vectors[i], low, high, rng)
        return (min(i, j), max(i, j))

    for _ in range(knife_pairs):
        above.append(plant(threshold, threshold + knife))
        below.append(plant(threshold - knife, threshold))
    for _ in range(clear_pairs):
        value = float(rng.uniform(0.95, 0.99))
        above.append(plant(value - 1e-3, value + 1e-3))
        value = float(rng.uniform(0.86, 0.9))
        below.append(plant(value - 1e-3, value + 1e-3))
    previous = next(free)
    for _ in range(chain - 1):
        pair = plant(threshold + 0.01, threshold + 0.02, anchor=previous)
        above.append(pair)
        previous = pair[0] if pair[1] == previous else pair[1]
    sizes = np.stack([rng.integers(32, 1024, n), rng.integers(32, 1024, n)], axis=1).astype(np.int32)
    return Planted(vectors, above, below, sizes)
