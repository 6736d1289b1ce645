"""Blocked Gram products of unit vectors: the fastest matmul backend on the machine, a screening precision,
and a proven bound on the screening error.

Clustering, nearest-neighbour analysis and hypersphere packing all need ``x_i · x_j`` for (almost) every
pair of N unit vectors without ever holding N×N. They compute it in blocks, in a *screening* precision
(float32 on CPUs, bfloat16 where that is faster), and re-check only the pairs whose screened value lies
within :meth:`GramBackend.error_bound` of a decision threshold in an exact precision. The bound is the
standard floating-point dot-product bound for unit vectors (``Σ|x_k y_k| ≤ 1`` by Cauchy–Schwarz):
input rounding ``2u_in + u_in²``, accumulation ``γ_d = d·u_acc / (1 − d·u_acc)``, output rounding
``u_out·(1 + …)``, times a 10% safety factor.

:func:`select_backend` measures the candidates on a probe of the real shape and keeps the fastest per
process (DESIGN §6: on these AMD CPUs numpy's OpenBLAS and torch differ by 2–3× in float32, and torch's
bfloat16 is twice as fast again on a Zen 4 but ~8× slower on a Zen 3 without bf16 instructions), so the
choice is a measurement, not a guess.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from facelake.lake.progress import Progress, Report

SCREENS = ("auto", "numpy-float32", "torch-float32", "torch-bfloat16")
"""Screening backends a caller may name; ``auto`` measures and picks the fastest."""

_U32 = 2.0**-24
_UBF16 = 2.0**-8


@dataclass(frozen=True)
class GramBackend:
    """One way of computing screened Gram blocks ``a @ b.T`` of float32 tensors, and its error bound."""

    name: str
    device: str
    input_roundoff: float
    output_roundoff: float
    accumulate_roundoff: float = _U32

    @property
    def screen_dtype(self) -> torch.dtype:
        """The dtype vectors are stored in for screening."""
        return torch.bfloat16 if self.name.endswith("bfloat16") else torch.float32

    def error_bound(self, dim: int) -> float:
        """Upper bound on ``|screened − exact|`` of a dot product of two unit vectors of dimension ``dim``."""
        gamma = dim * self.accumulate_roundoff / (1.0 - dim * self.accumulate_roundoff)
        inputs = 2.0 * self.input_roundoff + self.input_roundoff**2
        products = (1.0 + inputs) * (1.0 + gamma) - 1.0
        return 1.1 * (products + self.output_roundoff * (1.0 + products))

    def prepare(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``vectors`` [N, d] as a contiguous tensor in the screening dtype on this backend's device."""
        tensor = torch.as_tensor(vectors)
        return tensor.to(device=self.device, dtype=self.screen_dtype).contiguous()

    def gram(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Screened ``a @ b.T`` as float32 on the device (``a is b`` uses the symmetric kernel where one exists)."""
        if self.name == "numpy-float32":
            left = a.numpy()
            right = left if b is a else b.numpy()
            return torch.from_numpy(left @ right.T)
        return (a @ b.T).float()

    def describe(self) -> str:
        """One line for logs and benchmark output."""
        return f"{self.name} on {self.device}"


def _backend(name: str, device: str) -> GramBackend:
    if name == "torch-bfloat16":
        return GramBackend(name, device, input_roundoff=_UBF16, output_roundoff=_UBF16)
    if name in ("numpy-float32", "torch-float32"):
        return GramBackend(name, device, input_roundoff=0.0, output_roundoff=0.0)
    raise ValueError(f"unknown Gram screen {name!r}; choose one of {SCREENS}")


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def strict_matmul() -> Iterator[None]:
    """Within the block, matmuls honour :meth:`GramBackend.error_bound`: float32 in full precision (no
    TF32/bf16 passes) and bfloat16 products reduced in float32 on CUDA; the previous settings come back after."""
    precision = torch.get_float32_matmul_precision()
    reduced = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced


def candidate_backends(device: str) -> list[GramBackend]:
    """The screens worth measuring on ``device`` (numpy only on the CPU; TF32 is never used)."""
    names = ["torch-float32", "torch-bfloat16"]
    if device == "cpu":
        names.insert(0, "numpy-float32")
    return [_backend(name, device) for name in names]


def _time_gram(backend: GramBackend, dim: int, rows: int, repeats: int = 3) -> float:
    """Seconds per screened block as the searches use it: four half-size blocks in a row, each product
    followed by its row and column maxima and a threshold in torch. The torch work matters on the CPU:
    numpy's BLAS threads keep spinning after each product and slow torch's own thread pool down (and the
    other way round), so the faster bare product can be the slower screen."""
    generator = torch.Generator().manual_seed(0)
    half = max(1, rows // 2)
    a = backend.prepare(torch.randn(rows, dim, generator=generator))
    b = backend.prepare(torch.randn(rows, dim, generator=generator))
    pieces = [(a[i : i + half], b[j : j + half]) for i in (0, half) for j in (0, half)]

    def screen() -> None:
        for left, right in pieces:
            block = backend.gram(left, right)
            top = block.amax(1)
            block.amax(0)
            torch.count_nonzero(block >= top[:, None])
        if backend.device == "cuda":
            torch.cuda.synchronize()

    screen()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        screen()
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=16)
def measured_backends(device: str, dim: int, rows: int = 2048) -> tuple[tuple[str, float], ...]:
    """Seconds per ``rows×dim @ dim×rows`` screened block (product and maxima) for each candidate screen on
    ``device``, fastest first."""
    timings = [(b.name, _time_gram(b, dim, rows)) for b in candidate_backends(device)]
    return tuple(sorted(timings, key=lambda item: item[1]))


def select_backend(screen: str = "auto", dim: int = 512, device: str | None = None) -> GramBackend:
    """The named screen, or with ``auto`` the fastest measured one (``FACELAKE_GRAM_SCREEN`` overrides)."""
    device = device or default_device()
    screen = os.environ.get("FACELAKE_GRAM_SCREEN", screen)
    if screen not in SCREENS:
        raise ValueError(f"unknown Gram screen {screen!r}; choose one of {SCREENS}")
    if screen == "numpy-float32" and device != "cpu":
        raise ValueError("the numpy-float32 screen runs on the CPU only")
    if screen == "auto":
        screen = measured_backends(device, dim)[0][0]
    return _backend(screen, device)


def upper_blocks(n: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """``(i0, i1, j0, j1)`` for every block of the upper triangle (``j0 >= i0``) of an ``n×n`` matrix."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    for i0 in range(0, n, block):
        for j0 in range(i0, n, block):
            yield i0, min(i0 + block, n), j0, min(j0 + block, n)


def block_pairs(i0: int, i1: int, j0: int, j1: int) -> int:
    """The distinct pairs ``i < j`` an upper-triangle block of :func:`upper_blocks` holds (all ``n(n-1)/2``
    over the blocks)."""
    size = i1 - i0
    return size * (size - 1) // 2 if i0 == j0 else size * (j1 - j0)


def pair_progress(label: str, n: int, report: Report | None) -> Progress:
    """Progress over the ``n(n-1)/2`` pairs of ``n`` rows scanned block by block (advance by
    :func:`block_pairs`), reported through ``report`` (None: silent)."""
    return Progress(label, n * (n - 1) // 2, report, unit="pairs")


def pair_dots(vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``vectors[rows[k]] · vectors[cols[k]]`` for every k, in ``vectors``' own dtype, chunked."""
    out = np.empty(len(rows), dtype=vectors.dtype)
    for start in range(0, len(rows), chunk):
        stop = start + chunk
        left, right = vectors[rows[start:stop]], vectors[cols[start:stop]]
        out[start:stop] = np.einsum("ij,ij->i", left, right)
    return out
