"""Account for every sample of a download: one final status per input SAMPLE_ID.

A sample may be attempted in several shards (a first run, then retries of its failures into new shards
with img2dataset's "extend" mode). Its final status is the one in the highest shard id that holds it,
since retries always come later. Every input SAMPLE_ID must end in exactly one status, and no shard may
hold an id that was not in the input; anything else is a :class:`DownloadIntegrityError`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facelake.laion.download_options import SAMPLE_ID, DownloadOptions
from facelake.laion.download_shards import DownloadIntegrityError, Shard
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage

SUCCESS = "success"
OPTED_OUT = "opted_out"
ROBOTS_ERROR = "X-Robots-Tag"
# Failures that a retry cannot fix: the host said the image is gone or not to be used, or the bytes
# it sent are not a usable image.
PERMANENT_ERROR_MARKERS = (ROBOTS_ERROR, "HTTP Error 404", "HTTP Error 410", "HTTP Error 451")

RESOLVED_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("shard_id", pa.int32()),
        ("key", pa.string()),
        ("attempts", pa.int32()),
    ]
)

_STATUS_COLUMNS = ["status", "error_message", "key"]


def is_permanent_failure(status: str, error_message: str | None) -> bool:
    """True for failures a retry would repeat (404/410/451, X-Robots-Tag opt-out, undecodable image)."""
    if status == SUCCESS:
        return False
    if status == "failed_to_resize":
        return True
    return any(marker in (error_message or "") for marker in PERMANENT_ERROR_MARKERS)


def _read_shard(storage: Storage, shard: Shard, columns: list[str]) -> pl.DataFrame:
    try:
        with storage.open(shard.parquet_uri, "rb") as handle:
            table = pq.read_table(handle, columns=columns)
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise InputError(shard.parquet_uri, f"unreadable img2dataset shard parquet: {exc}") from exc
    frame = pl.from_arrow(table)
    return frame.with_columns(pl.lit(shard.shard_id, pl.Int32).alias("shard_id"))


def _shard_schema(storage: Storage, shard: Shard) -> pa.Schema:
    with storage.open(shard.parquet_uri, "rb") as handle:
        return pq.read_schema(handle)


def final_attempts(
    storage: Storage, shards: list[Shard], extra_columns: tuple[str, ...] = ()
) -> pl.DataFrame:
    """One row per SAMPLE_ID seen in the shards: its last attempt's columns, and ``attempts`` (shards seen)."""
    columns = [SAMPLE_ID, *_STATUS_COLUMNS, *extra_columns]
    frames = [_read_shard(storage, shard, columns) for shard in shards]
    if not frames:
        schema = {SAMPLE_ID: pl.Int64, "status": pl.Utf8, "error_message": pl.Utf8, "key": pl.Utf8}
        return pl.DataFrame(schema=schema | {c: pl.Utf8 for c in extra_columns}).with_columns(
            pl.lit(None, pl.Int32).alias("shard_id"), pl.lit(None, pl.UInt32).alias("attempts")
        )
    attempts = pl.concat(frames, how="vertical_relaxed").sort([SAMPLE_ID, "shard_id"])
    counts = attempts.group_by(SAMPLE_ID).agg(pl.len().alias("attempts"))
    last = attempts.unique(subset=[SAMPLE_ID], keep="last", maintain_order=True)
    return last.join(counts, on=SAMPLE_ID, how="left")


def failed_samples(
    storage: Storage,
    shards: list[Shard],
    options: DownloadOptions | None = None,
    include_permanent: bool = True,
) -> pa.Table:
    """Input rows (SAMPLE_ID, URL, TEXT, NSFW, similarity, LICENSE) whose final status is not success.

    With ``include_permanent=False`` failures a retry cannot fix (:func:`is_permanent_failure`) are left
    out. The table is a valid img2dataset input for a retry into new shards ("extend" mode).
    """
    options = options or DownloadOptions()
    saved = [c for c in options.save_additional_columns if c != SAMPLE_ID]
    caption = ["caption"] if options.caption_col else []
    last = final_attempts(storage, shards, ("url", *caption, *saved))
    failed = last.filter(pl.col("status") != SUCCESS)
    if not include_permanent and failed.height:
        transient = [
            not is_permanent_failure(s, e)
            for s, e in zip(failed["status"], failed["error_message"], strict=True)
        ]
        failed = failed.filter(pl.Series(transient, dtype=pl.Boolean))
    renames = {"url": options.url_col} | ({"caption": options.caption_col} if options.caption_col else {})
    table = failed.sort(SAMPLE_ID).rename(renames).select(options.input_columns).to_arrow()
    if not shards:
        return table
    source = _shard_schema(storage, shards[0])
    inverse = {new: old for old, new in renames.items()}
    return table.cast(pa.schema([source.field(inverse.get(c, c)).with_name(c) for c in table.column_names]))


def _ids(table: pa.Table, name: str, columns: tuple[str, ...]) -> pa.Array:
    """The non-null int64 ids of the first of ``columns`` present; refuses nulls in the input table."""
    column = next((c for c in columns if c in table.column_names), None)
    if column is None:
        raise InputError(name, f"no {' or '.join(columns)} column (found {table.column_names})")
    try:
        ids = table[column].cast(pa.int64()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(name, f"{column} is not an integer column: {exc}") from exc
    return ids


def _check_input_ids(ids: pa.Array) -> None:
    if ids.null_count:
        raise InputError("download input", f"{ids.null_count} rows have a null {SAMPLE_ID}")
    if len(pc.unique(ids)) != len(ids):
        raise InputError("download input", f"duplicate {SAMPLE_ID}s: each sample must appear once")


def _sample_of(ids: pl.Series, limit: int = 5) -> str:
    return ", ".join(str(i) for i in ids.head(limit).to_list()) + (" …" if len(ids) > limit else "")


def resolve_samples(
    storage: Storage, shards: list[Shard], input_table: pa.Table, opted_out: pa.Table | None = None
) -> pa.Table:
    """One row per input SAMPLE_ID with its final status, plus the opted-out ids as ``opted_out``.

    Columns: sample_id, status, error_message, shard_id, key (webdataset key, null unless success),
    attempts (how many shards saw it). ``input_table`` holds the rows given to img2dataset;
    ``opted_out`` (SAMPLE_ID or sample_id column) the rows held back before the download. Raises
    :class:`DownloadIntegrityError` if an input id is in no shard, a shard holds an id that was not in the
    input, or an opted-out id was sent to the downloader.
    """
    input_ids = _ids(input_table, "download input", (SAMPLE_ID,))
    _check_input_ids(input_ids)
    blocked = pa.array([], pa.int64())
    if opted_out is not None:
        blocked = pc.unique(pc.drop_null(_ids(opted_out, "opt-out table", (SAMPLE_ID, "sample_id"))))
    sent_blocked = pl.Series(pc.filter(blocked, pc.is_in(blocked, value_set=input_ids)))
    if len(sent_blocked):
        raise DownloadIntegrityError(
            f"opted-out samples were given to the downloader: {_sample_of(sent_blocked)}"
        )

    last = final_attempts(storage, shards)
    expected = pl.DataFrame({SAMPLE_ID: pl.Series(input_ids)})
    unknown = last.join(expected, on=SAMPLE_ID, how="anti")[SAMPLE_ID]
    if len(unknown):
        raise DownloadIntegrityError(
            f"{len(unknown)} SAMPLE_IDs in the shards are not in the input: {_sample_of(unknown)}"
        )
    missing = expected.join(last, on=SAMPLE_ID, how="anti")[SAMPLE_ID]
    if len(missing):
        raise DownloadIntegrityError(
            f"{len(missing)} input SAMPLE_IDs are in no committed shard (unfinished download?): {_sample_of(missing)}"
        )

    resolved = last.select(
        pl.col(SAMPLE_ID).alias("sample_id"),
        "status",
        pl.when(pl.col("status") == SUCCESS)
        .then(None)
        .otherwise(pl.col("error_message"))
        .alias("error_message"),
        "shard_id",
        pl.when(pl.col("status") == SUCCESS).then(pl.col("key")).otherwise(None).alias("key"),
        "attempts",
    )
    held_back = pl.DataFrame({"sample_id": pl.Series(blocked, dtype=pl.Int64)}).with_columns(
        pl.lit(OPTED_OUT).alias("status"),
        pl.lit(None, pl.Utf8).alias("error_message"),
        pl.lit(None, pl.Int32).alias("shard_id"),
        pl.lit(None, pl.Utf8).alias("key"),
        pl.lit(0).alias("attempts"),
    )
    combined = pl.concat([resolved, held_back], how="vertical_relaxed").sort("sample_id")
    return combined.to_arrow().cast(RESOLVED_SCHEMA)


def summarize(
    resolved: pa.Table, shards: list[Shard], seconds: float, top_errors: int = 10
) -> dict[str, Any]:
    """Counts by status, success rate (of the non-opted-out samples), tar bytes, images/s, top errors."""
    statuses = Counter(resolved["status"].to_pylist())
    attempted = resolved.num_rows - statuses.get(OPTED_OUT, 0)
    successes = statuses.get(SUCCESS, 0)
    errors = Counter(e for e in resolved["error_message"].to_pylist() if e is not None)
    attempts = resolved["attempts"].to_numpy(zero_copy_only=False)
    return {
        "samples": resolved.num_rows,
        "by_status": dict(sorted(statuses.items())),
        "success_rate": successes / attempted if attempted else 0.0,
        "robots_disallowed": sum(n for e, n in errors.items() if ROBOTS_ERROR in e),
        "retried_samples": int((attempts > 1).sum()),
        "top_errors": dict(errors.most_common(top_errors)),
        "shards": len(shards),
        "tar_bytes": sum(s.tar_bytes for s in shards),
        "seconds": seconds,
        "images_per_s": successes / seconds if seconds > 0 else 0.0,
    }
