"""Checkpoints of long packing runs: plain numpy arrays in an ``.npz``, never pickles.

A checkpoint is a ``dict[str, np.ndarray]`` (points, Adam moments, step, RNG state, history, the config it
belongs to as UTF-8 bytes). :class:`StorageCheckpointer` keeps it at one URI of a
:class:`facelake.lake.storage.Storage`, replaced whole (a local temporary file and an atomic rename; one S3 PUT),
so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any, Protocol

import numpy as np

from facelake.lake.errors import InputError
from facelake.lake.storage import Storage


class Checkpointer(Protocol):
    """Where a packing run keeps its latest state."""

    def load(self) -> dict[str, np.ndarray] | None: ...

    def save(self, state: dict[str, np.ndarray]) -> None: ...


class MemoryCheckpointer:
    """Keeps the latest state in memory (tests, notebooks); counts saves."""

    def __init__(self) -> None:
        self.state: dict[str, np.ndarray] | None = None
        self.saves = 0

    def load(self) -> dict[str, np.ndarray] | None:
        return None if self.state is None else {k: v.copy() for k, v in self.state.items()}

    def save(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v, copy=True) for k, v in state.items()}
        self.saves += 1


class StorageCheckpointer:
    """An ``.npz`` checkpoint at ``uri`` of ``storage`` (``allow_pickle=False``), replaced atomically."""

    def __init__(self, storage: Storage, uri: str) -> None:
        self.storage = storage
        self.uri = uri

    def load(self) -> dict[str, np.ndarray] | None:
        """The saved state, or None when there is none; a corrupt file raises InputError naming it."""
        if not self.storage.exists(self.uri):
            return None
        data = self.storage.read_bytes(self.uri)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(self.uri, f"not a readable packing checkpoint ({exc})") from exc

    def save(self, state: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        self.storage.write_bytes(self.uri, buffer.getvalue())


def text_array(value: Any) -> np.ndarray:
    """A JSON-able value as a uint8 array (how strings and dicts travel in a pickle-free ``.npz``)."""
    return np.frombuffer(json.dumps(value, sort_keys=True).encode(), dtype=np.uint8).copy()


def array_text(array: np.ndarray) -> Any:
    """Inverse of :func:`text_array`."""
    return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode())
