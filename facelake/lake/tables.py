"""Reading parquet through the lake's filesystem (local or S3)."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facelake.lake.errors import InputError
from facelake.lake.storage import Storage


def read_parquet(storage: Storage, uri: str, columns: list[str] | None = None) -> pa.Table:
    """A whole (small) parquet file through the storage's filesystem."""
    with storage.open(uri, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def read_input_parquet(storage: Storage, uri: str, what: str = "parquet table") -> pa.Table:
    """An outside parquet file; a missing or unreadable one is an :class:`InputError` naming it and ``what``."""
    try:
        return read_parquet(storage, uri)
    except FileNotFoundError as exc:
        raise InputError(uri, f"{what} not found") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(uri, f"not a readable parquet file: {exc}") from exc


def write_parquet(storage: Storage, uri: str, table: pa.Table) -> dict[str, Any]:
    """Write a table as one parquet object (atomic on local disk); returns its ``rows``, ``size`` and ``sha256``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    storage.write_bytes(uri, data)
    return {"rows": table.num_rows, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
