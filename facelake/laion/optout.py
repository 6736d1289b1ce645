"""The opt-out blocklist: SAMPLE_IDs and URLs of people who asked to be removed.

Blocklists are CSV or parquet files with a ``SAMPLE_ID`` and/or a ``URL`` column. They are normalised into one
table (sample_id, url, source) that the download stage applies before anything is requested, and that later
stages apply again so a sample blocked after its download never reaches them.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from facelake.lake.errors import InputError
from facelake.lake.storage import Storage

BLOCKLIST_SCHEMA = pa.schema([("sample_id", pa.int64()), ("url", pa.string()), ("source", pa.string())])


def read_blocklist(uri: str, storage: Storage) -> pa.Table:
    """Read one blocklist file into BLOCKLIST_SCHEMA; errors name the file and the problem."""
    if not storage.exists(uri):
        raise InputError(uri, "opt-out blocklist not found")
    try:
        with storage.open(uri, "rb") as handle:
            if uri.endswith(".parquet"):
                table = pq.read_table(handle)
            elif uri.endswith((".csv", ".csv.gz")):
                table = pacsv.read_csv(handle)
            else:
                raise InputError(uri, "unsupported blocklist format (use .csv or .parquet)")
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(uri, f"unreadable blocklist: {exc}") from exc
    columns = {name.upper(): name for name in table.column_names}
    if "SAMPLE_ID" not in columns and "URL" not in columns:
        raise InputError(uri, f"blocklist needs a SAMPLE_ID or URL column, found {table.column_names}")
    n = table.num_rows
    if "SAMPLE_ID" in columns:
        try:
            ids = table[columns["SAMPLE_ID"]].cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(uri, f"SAMPLE_ID is not an integer column: {exc}") from exc
    else:
        ids = pa.nulls(n, pa.int64())
    urls = table[columns["URL"]].cast(pa.string()) if "URL" in columns else pa.nulls(n, pa.string())
    return pa.table([ids, urls, pa.array([uri] * n, pa.string())], schema=BLOCKLIST_SCHEMA)


def read_blocklists(uris: list[str], storage: Storage) -> pa.Table:
    """All blocklists in one table, de-duplicated on (sample_id, url)."""
    tables = [read_blocklist(uri, storage) for uri in uris]
    if not tables:
        return BLOCKLIST_SCHEMA.empty_table()
    merged = pa.concat_tables(tables)
    return (
        merged.group_by(["sample_id", "url"], use_threads=False)
        .aggregate([("source", "min")])
        .rename_columns(["sample_id", "url", "source"])
        .select(["sample_id", "url", "source"])
    )


def blocked_mask(
    sample_ids: pa.Array | pa.ChunkedArray, urls: pa.Array | pa.ChunkedArray | None, blocklist: pa.Table
) -> pa.ChunkedArray:
    """True where a row's SAMPLE_ID or URL is on the blocklist."""
    block_ids = pc.drop_null(blocklist["sample_id"]).unique()
    mask = pc.is_in(sample_ids, value_set=block_ids)
    if urls is not None:
        block_urls = pc.drop_null(blocklist["url"]).unique()
        if len(block_urls):
            mask = pc.or_(mask, pc.fill_null(pc.is_in(urls, value_set=block_urls), False))
    return pc.fill_null(mask, False)


def split_blocked(table: pa.Table, blocklist: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split a metadata table (SAMPLE_ID, URL, …) into (kept, blocked) rows, order preserved."""
    urls = table["URL"] if "URL" in table.column_names else None
    mask = blocked_mask(table["SAMPLE_ID"], urls, blocklist)
    return table.filter(pc.invert(mask)), table.filter(mask)


def blocked_sample_ids(table: pa.Table, blocklist: pa.Table) -> pa.Array:
    """SAMPLE_IDs of a metadata table's rows that the blocklist blocks (by id or by URL)."""
    _, blocked = split_blocked(table, blocklist)
    return blocked["SAMPLE_ID"].combine_chunks()
