"""Synthetic identity embeddings on the unit sphere, shaped like a face set's (CelebA-HQ's ArcFace vectors).

Every identity has a centre; its samples are unit vectors at cosine ``≈ intra`` to each other, samples of
different identities at cosine ``≈ inter``, and noise points are uniform on the sphere. The fluctuation
around those cosines is about ``1/sqrt(dim)``, so small dimensions make ragged clusters (chains, border
points) and 512 makes CelebA-HQ-like ones. Generated group by group with a per-group random stream, so a
million rows never need more than the output array, and rows come in a random order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticIdentities:
    """``vectors`` float32 ``[N, dim]`` unit rows; ``truth`` int64 ``[N]`` their identity (noise rows: -1)."""

    vectors: np.ndarray
    truth: np.ndarray

    @property
    def identities(self) -> int:
        """Number of identities with at least one sample (noise excluded)."""
        return len(np.unique(self.truth[self.truth >= 0]))


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def synthetic_identities(
    n: int,
    dim: int = 512,
    *,
    samples: tuple[int, int] = (1, 5),
    intra: float = 0.8,
    inter: float = 0.25,
    noise_fraction: float = 0.0,
    seed: int = 0,
    group: int = 8192,
) -> SyntheticIdentities:
    """``n`` unit vectors: identities of ``samples[0]..samples[1]`` samples each plus ``noise_fraction·n`` noise.

    Sample = ``sqrt(intra)·centre + sqrt(1 − intra)·h`` (h a random unit vector, normalised), centres share a
    common direction so that two centres meet at cosine ``inter / intra``: same-identity samples then meet at
    ``≈ intra`` and different identities at ``≈ inter``.
    """
    if not 0.0 < intra <= 1.0 or not 0.0 <= inter < intra:
        raise ValueError(f"need 0 <= inter < intra <= 1, got intra={intra}, inter={inter}")
    low, high = samples
    if not 1 <= low <= high:
        raise ValueError(f"samples must be (low, high) with 1 <= low <= high, got {samples}")
    rng = np.random.default_rng([seed, 0])
    n_noise = round(noise_fraction * n)
    sizes = rng.integers(low, high + 1, size=n // low + 1)
    ends = np.cumsum(sizes)
    k = int(np.searchsorted(ends, n - n_noise, side="left")) + 1
    sizes = sizes[:k]
    sizes[-1] -= int(ends[k - 1]) - (n - n_noise)
    sizes = sizes[sizes > 0]
    truth_sorted = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    order = rng.permutation(n)
    common = _unit(rng.standard_normal((1, dim)))
    share = inter / intra
    vectors = np.empty((n, dim), dtype=np.float32)
    truth = np.full(n, -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for number, first in enumerate(range(0, len(sizes), group)):
        stream = np.random.default_rng([seed, 1, number])
        last = min(first + group, len(sizes))
        centres = _unit(
            np.sqrt(share) * common
            + np.sqrt(1.0 - share) * _unit(stream.standard_normal((last - first, dim)))
        )
        rows = slice(starts[first], starts[last])
        owner = truth_sorted[rows]
        spread = _unit(stream.standard_normal((len(owner), dim)))
        block = _unit(np.sqrt(intra) * centres[owner - first] + np.sqrt(1.0 - intra) * spread)
        vectors[order[rows]] = block
        truth[order[rows]] = owner
    noise_rows = order[n - n_noise :]
    for number, first in enumerate(range(0, n_noise, group * 4)):
        stream = np.random.default_rng([seed, 2, number])
        part = noise_rows[first : first + group * 4]
        vectors[part] = _unit(stream.standard_normal((len(part), dim)))
    return SyntheticIdentities(vectors=vectors, truth=truth)
