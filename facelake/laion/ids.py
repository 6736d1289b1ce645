"""The LAION-Face id list (``laion_face_ids.pth``): 32 splits of SAMPLE_IDs, one per laion400m-meta part.

The container type is not documented (DESIGN §5): the file is indexable by split 0..31 (a list, tuple or a
dict keyed 0..31) and each split is a list of ints, a numpy array or a tensor. Everything is normalised to
1-D int64 numpy arrays — never sets of tensors, whose 0-d elements match no Python int.

Parquet layout (:func:`write_face_ids_parquet`): ONE file, columns ``part`` int16 and ``SAMPLE_ID`` int64
(the laion400m-meta column name, so it joins directly), sorted by part, exactly one row group per non-empty
part, ids in the file's order. :func:`read_part_ids` reads only the row groups whose ``part`` statistics
cover the part, i.e. one row group (~12 MB for a 1.5M-id part) plus the footer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from facelake.lake.errors import InputError, UnknownPartitionError
from facelake.lake.safe_load import load_torch_weights_only
from facelake.lake.storage import Storage

N_PARTS = 32
IDS_SCHEMA = pa.schema(
    [pa.field("part", pa.int16(), nullable=False), pa.field("SAMPLE_ID", pa.int64(), nullable=False)]
)


def _split_key(key: Any) -> int | None:
    """A dict key as a split index (int, numpy int, 0-d int tensor, '00007'), or None."""
    if isinstance(key, torch.Tensor) and key.ndim == 0 and not key.is_floating_point():
        key = key.item()
    if isinstance(key, str) and key.isdigit():
        return int(key)
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return int(key)
    return None


def _splits_of(obj: Any, path: str) -> list[Any]:
    """The 32 splits of a loaded id file, in split order."""
    if isinstance(obj, dict):
        by_index = {_split_key(key): value for key, value in obj.items()}
        if set(by_index) != set(range(N_PARTS)):
            shown = sorted(map(str, obj))[:8]
            raise InputError(path, f"expected a dict keyed by split 0..{N_PARTS - 1}, got keys {shown}...")
        return [by_index[i] for i in range(N_PARTS)]
    if isinstance(obj, list | tuple):
        if len(obj) != N_PARTS:
            raise InputError(path, f"expected {N_PARTS} splits, got {len(obj)}")
        return list(obj)
    raise InputError(
        path, f"expected a list or dict of {N_PARTS} splits indexable 0..31, got {type(obj).__name__}"
    )


def _split_array(split: Any, path: str, index: int) -> np.ndarray:
    """One split as a 1-D int64 array, in its own order (a set is sorted: it has no order)."""
    if isinstance(split, torch.Tensor):
        array = split.detach().cpu().numpy()
    elif isinstance(split, np.ndarray):
        array = split
    elif isinstance(split, list | tuple | set | frozenset):
        items = sorted(split) if isinstance(split, set | frozenset) else split
        try:
            array = np.asarray(items) if len(items) else np.zeros(0, np.int64)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InputError(path, f"split {index} is not a flat list of integers: {exc}") from None
    else:
        raise InputError(path, f"split {index} is a {type(split).__name__}, expected a list, array or tensor")
    if array.ndim != 1:
        raise InputError(
            path, f"split {index} has shape {array.shape}, expected a 1-D sequence of SAMPLE_IDs"
        )
    if array.dtype.kind not in "iu":
        raise InputError(path, f"split {index} has non-integer values (dtype {array.dtype})")
    if array.dtype == np.uint64 and len(array) and array.max() > np.iinfo(np.int64).max:
        raise InputError(path, f"split {index} has SAMPLE_IDs beyond int64")
    return np.ascontiguousarray(array, dtype=np.int64)


def load_face_ids(uri: str, storage: Storage | None = None) -> list[np.ndarray]:
    """The 32 splits of ``laion_face_ids.pth`` as int64 arrays (safe load; InputError names the file)."""
    splits = _splits_of(load_torch_weights_only(uri, storage), uri)
    return [_split_array(split, uri, index) for index, split in enumerate(splits)]


def write_face_ids_parquet(splits: Sequence[np.ndarray], uri: str, storage: Storage) -> dict[str, Any]:
    """Write the splits as one parquet (one row group per part); returns row counts and duplicates."""
    rows_per_part = [len(split) for split in splits]
    duplicates = [len(split) - len(np.unique(split)) for split in splits]
    with storage.open(uri, "wb") as sink, pq.ParquetWriter(sink, IDS_SCHEMA, compression="zstd") as writer:
        for part, split in enumerate(splits):
            if len(split):
                columns = [
                    pa.array(np.full(len(split), part, np.int16)),
                    pa.array(np.asarray(split, np.int64)),
                ]
                writer.write_table(
                    pa.Table.from_arrays(columns, schema=IDS_SCHEMA), row_group_size=len(split)
                )
    return {
        "rows": int(sum(rows_per_part)),
        "rows_per_part": rows_per_part,
        "duplicate_ids": int(sum(duplicates)),
    }


def convert_face_ids(src_uri: str, dst_uri: str, storage: Storage) -> dict[str, Any]:
    """Load ``laion_face_ids.pth`` safely and write it as the ids parquet; returns the write stats."""
    return write_face_ids_parquet(load_face_ids(src_uri, storage), dst_uri, storage)


def _part_row_groups(metadata: pq.FileMetaData, part: int) -> list[int]:
    """Row groups whose ``part`` statistics may contain ``part`` (all of them when stats are missing)."""
    column = metadata.schema.names.index("part")
    groups = []
    for index in range(metadata.num_row_groups):
        stats = metadata.row_group(index).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min <= part <= stats.max:
            groups.append(index)
    return groups


def read_part_ids(uri: str, part: int, storage: Storage) -> np.ndarray:
    """The SAMPLE_IDs of one part from the ids parquet, in the original order, as int64."""
    if not 0 <= part < N_PARTS:
        raise UnknownPartitionError(str(part), f"0..{N_PARTS - 1}")
    if not storage.exists(uri):
        raise InputError(uri, "face id parquet not found")
    with storage.open(uri, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if not {"part", "SAMPLE_ID"} <= set(parquet.schema_arrow.names):
            raise InputError(uri, f"expected columns part, SAMPLE_ID; got {parquet.schema_arrow.names}")
        groups = _part_row_groups(parquet.metadata, part)
        if not groups:
            return np.zeros(0, np.int64)
        table = parquet.read_row_groups(groups, columns=["part", "SAMPLE_ID"])
    mask = table.column("part").to_numpy() == part
    return np.ascontiguousarray(table.column("SAMPLE_ID").to_numpy()[mask], dtype=np.int64)
