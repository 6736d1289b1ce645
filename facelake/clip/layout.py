"""clip-retrieval's output layout, written and read by this project (the package itself pins open-clip-torch<3,
numpy<2 and pyarrow<16, so it cannot be a dependency; DESIGN §9).

Under one prefix::

    img_emb/img_emb_{i}.npy            float16 [n_i, d], rows L2-normalised (in float32, then rounded)
    metadata/metadata_{i}.parquet      n_i rows in the same order: image_path (the sample key), caption,
                                       url, SAMPLE_ID (null where unknown), width, height (the original
                                       image's), and the embedding-space provenance columns
    space.json                         the space (provenance), its label, the random-weights warning, speed

``i`` is zero-padded (:data:`PART_DIGITS`, like the shard names it comes from). The files load with plain
``numpy.load`` and ``pyarrow.parquet.read_table``; :func:`read_layout` does that and checks that every part
agrees with the others and with ``space.json`` on the embedding space.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage
from facelake.vectors.spaces import (
    EmbedderProfile,
    check_same_space,
    provenance_columns,
    space_label,
    table_space,
)

IMG_EMB = "img_emb"
METADATA = "metadata"
SPACE_FILE = "space.json"
PART_DIGITS = 5
UNIT_TOLERANCE = 2e-3
"""How far from 1 the norm of a stored float16 row may be (rounding each of d components: ~2⁻¹¹ relative)."""
_EMB_FILE = re.compile(r"^img_emb_(\d+)\.npy$")
_META_FILE = re.compile(r"^metadata_(\d+)\.parquet$")
KEY_COLUMN = "image_path"
BASE_COLUMNS = ("image_path", "caption", "url", "SAMPLE_ID", "width", "height")


def part_name(index: int, digits: int = PART_DIGITS) -> str:
    """``i`` zero-padded to ``digits``."""
    return f"{int(index):0{digits}d}"


def embedding_path(index: int, digits: int = PART_DIGITS) -> str:
    return f"{IMG_EMB}/img_emb_{part_name(index, digits)}.npy"


def metadata_path(index: int, digits: int = PART_DIGITS) -> str:
    return f"{METADATA}/metadata_{part_name(index, digits)}.parquet"


def to_float16(vectors: np.ndarray) -> np.ndarray:
    """Unit float32 rows rounded to float16 (re-normalised in float64 first if any norm is off by > 1e-6)."""
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected [N, d] vectors, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1)
    if (norms == 0).any():
        raise ValueError(f"row {int(np.argmax(norms == 0))} has zero length")
    if len(norms) and np.abs(norms - 1).max() > 1e-6:
        array = array / norms[:, None]
    return array.astype(np.float16)


def npy_bytes(array: np.ndarray) -> bytes:
    """``numpy.save`` of ``array`` to bytes (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def metadata_table(
    keys: Sequence[str],
    profile: EmbedderProfile,
    *,
    captions: Sequence[str | None] | None = None,
    urls: Sequence[str | None] | None = None,
    sample_ids: Sequence[int | None] | None = None,
    sizes: np.ndarray | None = None,
) -> pa.Table:
    """The metadata rows of one part (see the module doc)."""
    n = len(keys)
    sizes = np.zeros((n, 2), np.int32) if sizes is None else np.asarray(sizes, np.int32).reshape(n, 2)
    columns: dict[str, pa.Array] = {
        "image_path": pa.array(list(keys), pa.string()),
        "caption": pa.array(list(captions) if captions is not None else [None] * n, pa.string()),
        "url": pa.array(list(urls) if urls is not None else [None] * n, pa.string()),
        "SAMPLE_ID": pa.array(list(sample_ids) if sample_ids is not None else [None] * n, pa.int64()),
        "width": pa.array(sizes[:, 0], pa.int32()),
        "height": pa.array(sizes[:, 1], pa.int32()),
    }
    columns.update(provenance_columns(profile, n))
    return pa.table(columns)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class WrittenFile:
    """A file written under the layout prefix: its relative path, size, sha256 and rows."""

    path: str
    size: int
    sha256: str
    rows: int


def write_part(
    storage: Storage,
    prefix: str,
    index: int,
    vectors: np.ndarray,
    metadata: pa.Table,
    digits: int = PART_DIGITS,
) -> list[WrittenFile]:
    """Write part ``index``: ``vectors`` (float32 unit rows, or float16) as float16 and its metadata rows.

    Each file is written whole (atomically on local disk); returns both files' descriptions.
    """
    half = vectors if vectors.dtype == np.float16 else to_float16(vectors)
    if half.shape[0] != metadata.num_rows:
        raise ValueError(f"part {index}: {half.shape[0]} vectors but {metadata.num_rows} metadata rows")
    written = []
    for path, data in (
        (embedding_path(index, digits), npy_bytes(half)),
        (metadata_path(index, digits), _parquet_bytes(metadata)),
    ):
        storage.write_bytes(f"{prefix}/{path}", data)
        written.append(WrittenFile(path, len(data), hashlib.sha256(data).hexdigest(), int(half.shape[0])))
    return written


def space_record(profile: EmbedderProfile, warning: str | None, extra: dict[str, Any] | None = None) -> dict:
    """The content of ``space.json``: provenance, label, random-weights flag and warning, plus ``extra``."""
    return {
        "space": profile.provenance(),
        "label": profile.describe(),
        "random_init": profile.random_init,
        "warning": warning,
        **(extra or {}),
    }


@dataclass
class ClipEmbeddings:
    """Embeddings loaded back from the layout: float16 vectors, their metadata rows, and their one space."""

    vectors: np.ndarray
    metadata: pa.Table
    space: dict[str, Any]
    parts: list[tuple[str, int]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def profile(self) -> EmbedderProfile:
        return EmbedderProfile.from_provenance(self.space)

    @property
    def keys(self) -> list[str]:
        return self.metadata.column(KEY_COLUMN).to_pylist()

    def label(self) -> str:
        return space_label(self.space)


def _load_npy(storage: Storage, uri: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(uri, f"not a readable .npy file: {error}") from error
    if array.dtype != np.float16 or array.ndim != 2:
        raise InputError(uri, f"expected float16 [n, d] embeddings, got {array.dtype} {array.shape}")
    return array


def _load_parquet(storage: Storage, uri: str) -> pa.Table:
    try:
        with storage.open(uri, "rb") as handle:
            return pq.read_table(handle)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(uri, f"not a readable parquet file: {error}") from error


def _indexed(paths: Iterable[str], pattern: re.Pattern[str]) -> dict[str, str]:
    found = {}
    for path in paths:
        match = pattern.match(path.rsplit("/", 1)[-1])
        if match:
            found[match.group(1)] = path
    return found


def read_layout(storage: Storage, prefix: str, files: Iterable[str] | None = None) -> ClipEmbeddings:
    """Load every part under ``prefix`` (``files``: the relative paths a manifest lists; default: list the
    folders), in part order, checking rows, dimensions and the embedding space of every part."""
    prefix = prefix.rstrip("/")
    listed = [storage.relative(u, prefix) for u in storage.find(prefix)] if files is None else list(files)
    embs = _indexed((p for p in listed if p.startswith(f"{IMG_EMB}/")), _EMB_FILE)
    metas = _indexed((p for p in listed if p.startswith(f"{METADATA}/")), _META_FILE)
    if set(embs) != set(metas):
        raise InputError(
            prefix,
            f"img_emb and metadata parts differ: only embeddings {sorted(set(embs) - set(metas))}, "
            f"only metadata {sorted(set(metas) - set(embs))}",
        )
    if not embs:
        raise InputError(prefix, f"no {IMG_EMB}/img_emb_*.npy parts")
    vectors, tables, parts, spaces = [], [], [], []
    for name in sorted(embs, key=int):
        emb_uri, meta_uri = f"{prefix}/{embs[name]}", f"{prefix}/{metas[name]}"
        array, table = _load_npy(storage, emb_uri), _load_parquet(storage, meta_uri)
        if array.shape[0] != table.num_rows:
            raise InputError(meta_uri, f"{table.num_rows} rows but {emb_uri} holds {array.shape[0]} vectors")
        if table.num_rows:
            spaces.append(table_space(table))
        vectors.append(array)
        tables.append(table)
        parts.append((name, int(array.shape[0])))
    space_uri = f"{prefix}/{SPACE_FILE}"
    if (files is None or SPACE_FILE in listed) and storage.exists(space_uri):
        spaces.insert(0, storage.read_json(space_uri)["space"])
    if not spaces:
        raise InputError(prefix, "no rows and no space.json: the embedding space is unknown")
    space = check_same_space(spaces)
    dims = {a.shape[1] for a in vectors if a.shape[0]}
    if len(dims) > 1:
        raise InputError(prefix, f"parts have different dimensions {sorted(dims)}")
    dim = int(space["embedder_dimension"])
    if dims and dims != {dim}:
        raise InputError(prefix, f"vectors are {dims.pop()}-d but the space says {dim}-d")
    matrix = (
        np.concatenate([a.reshape(-1, dim) for a in vectors]) if vectors else np.zeros((0, dim), np.float16)
    )
    return ClipEmbeddings(matrix, pa.concat_tables(tables), space, parts, prefix)


def read_partition(artifact: PartitionArtifact) -> ClipEmbeddings:
    """The committed embeddings of a partition: exactly the parts its manifest lists."""
    manifest = artifact.require_manifest()
    return read_layout(artifact.storage, artifact.prefix, [f.path for f in manifest.files])


def combine(sets: Sequence[ClipEmbeddings], names: Sequence[str] | None = None) -> ClipEmbeddings:
    """Several embedding sets of ONE space as one (refused, naming both spaces, otherwise); a ``source``
    column (``names[i]`` or the set's prefix) tells the rows apart."""
    if not sets:
        raise ValueError("combine needs at least one embedding set")
    space = check_same_space([s.space for s in sets])
    names = list(names) if names is not None else [s.source for s in sets]
    tables = [
        s.metadata.append_column("source", pa.array([name] * len(s), pa.string()))
        for s, name in zip(sets, names, strict=True)
    ]
    parts = [(f"{name}:{part}", rows) for s, name in zip(sets, names, strict=True) for part, rows in s.parts]
    return ClipEmbeddings(
        np.concatenate([s.vectors for s in sets]),
        pa.concat_tables(tables, promote_options="default"),
        space,
        parts,
        ",".join(names),
    )


def check_unit(vectors: np.ndarray, tolerance: float = UNIT_TOLERANCE) -> float:
    """The largest ``|‖row‖ − 1|`` of stored vectors (float64); raises if it exceeds ``tolerance``."""
    worst = 0.0
    for start in range(0, len(vectors), 1 << 16):
        chunk = np.asarray(vectors[start : start + (1 << 16)], np.float64)
        worst = max(worst, float(np.abs(np.linalg.norm(chunk, axis=1) - 1.0).max(initial=0.0)))
    if worst > tolerance:
        raise ValueError(f"stored vectors are not unit length: max |norm - 1| = {worst:.2e} > {tolerance}")
    return worst
