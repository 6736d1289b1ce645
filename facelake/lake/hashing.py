"""Stable hashes of configs and files, used for manifests and Dagster data versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, BinaryIO


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Any, length: int = 16) -> str:
    """Short sha256 of a config's canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]


def sha256_stream(stream: BinaryIO, chunk_size: int = 8 << 20) -> str:
    """sha256 of a binary stream read in chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(chunk_size), b""):
        digest.update(chunk)
    return digest.hexdigest()


def combine_hashes(parts: Iterable[str]) -> str:
    """One sha256 over an ordered sequence of strings (file hashes, sizes, names)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
