"""Fixture ``.pth`` files in the formats of the LAION-Face releases, and malicious ones (tests, demo).

The released files were pickled with numpy 1, whose array and scalar globals are
``numpy.core.multiarray._reconstruct`` / ``numpy.core.multiarray.scalar``; numpy 2 writes
``numpy._core.multiarray``. :func:`torch_save_numpy1` reproduces the numpy-1 names by handing
``torch.save`` a pickle module whose (pure-Python) Pickler spells those globals the old way, so the loaders
are tested against what is really on the internet.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import subprocess
import types
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from facelake.lake.storage import Storage

Container = Literal["list", "numpy", "tensor"]
Payload = Literal["open", "os.system", "subprocess", "exec"]
Face = tuple[np.ndarray, np.ndarray, np.float32]

_NUMPY1_GLOBALS: dict[Any, bytes] = {
    np._core.multiarray._reconstruct: b"numpy.core.multiarray\n_reconstruct\n",
    np._core.multiarray.scalar: b"numpy.core.multiarray\nscalar\n",
}


class Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pure-Python pickler writing numpy's array/scalar globals under their numpy-1 module name."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        legacy = _NUMPY1_GLOBALS.get(obj)
        if legacy is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + legacy)
        self.memoize(obj)


numpy1_pickle_module = types.ModuleType("numpy1_pickle")
numpy1_pickle_module.Pickler = Numpy1Pickler  # type: ignore[attr-defined]


def _write(path: str, data: bytes, storage: Storage | None) -> None:
    if storage is not None:
        storage.write_bytes(path, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def torch_save_numpy1(obj: Any, path: str, storage: Storage | None = None) -> None:
    """``torch.save`` (protocol 2, zip format) with numpy-1 global names, to a local path or a URI."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_module=numpy1_pickle_module, pickle_protocol=2)
    _write(path, buffer.getvalue(), storage)


def _as_container(split: np.ndarray, container: Container) -> Any:
    split = np.asarray(split, dtype=np.int64)
    if container == "list":
        return split.tolist()
    if container == "numpy":
        return split
    if container == "tensor":
        return torch.from_numpy(split.copy())
    raise ValueError(f"unknown container {container!r}: expected list, numpy or tensor")


def save_face_ids(
    path: str,
    splits: Sequence[np.ndarray],
    container: Container,
    keyed: bool = False,
    storage: Storage | None = None,
) -> None:
    """Write a ``laion_face_ids.pth``: a list (or, ``keyed``, a dict 0..n-1) of splits in ``container`` form."""
    converted = [_as_container(split, container) for split in splits]
    obj: Any = dict(enumerate(converted)) if keyed else converted
    torch_save_numpy1(obj, path, storage)


def save_sample2detect(path: str, mapping: dict[int, list[Face]], storage: Storage | None = None) -> None:
    """Write a ``sample2detect_{i}.pth``: dict int(SAMPLE_ID) -> [(box f32[4], landmarks f32[5,2], score f32)]."""
    torch_save_numpy1(mapping, path, storage)


def random_sample2detect(
    sample_ids: np.ndarray, seed: int = 0, max_faces: int = 3, no_face_fraction: float = 0.1
) -> dict[int, list[Face]]:
    """A plausible detection dict: 0..max_faces faces per sample, sorted by score, float32 throughout.

    Random numbers are drawn vectorised; only the final split into per-face numpy objects is a loop.
    """
    rng = np.random.default_rng(seed)
    n = len(sample_ids)
    counts = rng.integers(1, max_faces + 1, size=n)
    counts[rng.random(n) < no_face_fraction] = 0
    total = int(counts.sum())
    corner = rng.uniform(0, 400, size=(total, 2)).astype(np.float32)
    size = rng.uniform(20, 200, size=(total, 1)).astype(np.float32)
    boxes = np.concatenate([corner, corner + size], axis=1)
    unit = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], dtype=np.float32)
    landmarks = corner[:, None, :] + unit[None] * size[:, None, :]
    scores = rng.uniform(0.5, 1.0, size=total).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n else np.zeros(0, np.int64)
    mapping: dict[int, list[Face]] = {}
    for sample_id, start, count in zip(sample_ids.tolist(), starts.tolist(), counts.tolist(), strict=True):
        order = start + np.argsort(-scores[start : start + count], kind="stable")
        mapping[sample_id] = [(boxes[i].copy(), landmarks[i].copy(), scores[i]) for i in order.tolist()]
    return mapping


# --- malicious files (they must be refused, and nothing in them may run) --------------------------------


class _Payload:
    """Pickles to a call that creates ``marker`` when (and only when) the pickle is executed."""

    def __init__(self, marker: str, via: Payload) -> None:
        self.marker, self.via = str(marker), via

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.via == "open":
            return open, (self.marker, "w")
        if self.via == "os.system":
            return os.system, (f"touch {shlex.quote(self.marker)}",)
        if self.via == "subprocess":
            return subprocess.call, (["touch", self.marker],)
        if self.via == "exec":
            return exec, (f"open({self.marker!r}, 'w').close()",)
        raise ValueError(f"unknown payload {self.via!r}")


def write_malicious_pth(path: str, marker_file: str, via: Payload = "open") -> None:
    """A ``torch.save`` file that looks like an id list but would create ``marker_file`` if unpickled."""
    torch.save({0: torch.arange(3), 1: _Payload(marker_file, via)}, path)


def write_malicious_pickle(path: str, marker_file: str, via: Payload = "open", protocol: int = 4) -> None:
    """A plain pickle shaped like an SFHQ features file that would create ``marker_file`` if unpickled."""
    payload = {"CLIP_ViTL_14@336": np.zeros((1, 768), np.float32), "extra": _Payload(marker_file, via)}
    with open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=protocol)
