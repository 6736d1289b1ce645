"""One LAION-Face part's download, as a committable unit: input, resume, retry, accounting, file list.

Layout under the partition prefix (the manifest ``_manifest.json`` sits beside, never inside, ``shards/``,
because img2dataset reads every ``*.json`` in its output folder as shard stats)::

    input/input.parquet   the part's face rows minus the blocklist, in the authors' order (fixes shard i)
    input/layout.json     what the input was built from; a change of meta or shard size restarts the part
    input/retry-*.parquet failed samples re-requested into new shards
    shards/NNNNN.{tar,parquet}, NNNNN_stats.json   img2dataset webdataset shards (committed = has stats)
    _attempts/<id>/samples.parquet   one row per input SAMPLE_ID with its final status

A blocklist that grows after the download keeps the shard layout: newly blocked samples are marked
``opted_out`` in ``samples.parquet`` (readers take successes from there) and are never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facelake.laion.download import (
    OPTED_OUT,
    SAMPLE_ID,
    DownloadOptions,
    clean_uncommitted_shards,
    committed_shards,
    resolve_samples,
    retry_failed_samples,
    run_img2dataset,
    summarize,
    write_download_input,
)
from facelake.laion.optout import blocked_sample_ids, split_blocked
from facelake.lake.commit import Attempt, Written
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet

OPTED_OUT_AFTER_DOWNLOAD = "opted out after download"


@dataclass
class PartDownload:
    """The files to commit and the summary of the part."""

    written: Written
    summary: dict


def prepare_input(
    storage: Storage,
    prefix: str,
    meta: pa.Table,
    blocklist: pa.Table,
    meta_version: str,
    options: DownloadOptions,
    restart: bool,
) -> tuple[str, pa.Table]:
    """The part's download input (reused while meta and shard size are unchanged); returns its uri and rows."""
    input_uri, layout_uri = f"{prefix}/input/input.parquet", f"{prefix}/input/layout.json"
    layout = {"meta": meta_version, "number_sample_per_shard": options.number_sample_per_shard}
    current = storage.read_json(layout_uri) if storage.exists(layout_uri) else None
    if not restart and current == layout and storage.exists(input_uri):
        return input_uri, read_parquet(storage, input_uri)
    storage.rm(f"{prefix}/shards")
    storage.rm(f"{prefix}/input")
    kept, _ = split_blocked(meta, blocklist)
    table = kept.select(options.input_columns)
    write_download_input(storage, table, input_uri)
    storage.write_json(layout_uri, layout)
    return input_uri, table


def mark_opted_out(resolved: pa.Table, blocked_ids: pa.Array) -> pa.Table:
    """Set status ``opted_out`` (and drop the key) for samples blocked after their download."""
    hit = pc.and_(
        pc.is_in(resolved["sample_id"], value_set=blocked_ids), pc.not_equal(resolved["status"], OPTED_OUT)
    )
    if not pc.any(hit).as_py():
        return resolved
    columns = {
        "status": pc.if_else(hit, OPTED_OUT, resolved["status"]),
        "error_message": pc.if_else(hit, OPTED_OUT_AFTER_DOWNLOAD, resolved["error_message"]),
        "key": pc.if_else(hit, pa.scalar(None, pa.string()), resolved["key"]),
    }
    for name, column in columns.items():
        resolved = resolved.set_column(resolved.schema.get_field_index(name), name, column)
    return resolved


def download_part(
    storage: Storage,
    attempt: Attempt,
    meta_uri: str,
    meta_version: str,
    blocklist: pa.Table,
    options: DownloadOptions,
    retry_failed: bool = False,
    restart: bool = False,
    log: Callable[[str], None] | None = None,
) -> PartDownload:
    """Download (or resume) a part into ``shards/``, optionally retry failures, and account for every sample."""
    prefix = attempt.artifact.prefix
    shards_uri = f"{prefix}/shards"
    meta = read_parquet(storage, meta_uri)
    input_uri, input_table = prepare_input(storage, prefix, meta, blocklist, meta_version, options, restart)
    blocked_ids = blocked_sample_ids(meta, blocklist)
    removed = clean_uncommitted_shards(storage, shards_uri)
    if removed and log:
        log(f"removed {len(removed)} file(s) of shards a previous attempt left uncommitted")
    seconds = run_img2dataset(storage, input_uri, shards_uri, options, on_output=log, progress=log).seconds
    retried = 0
    if retry_failed:
        retry_uri = f"{prefix}/input/retry-{attempt.id}.parquet"
        retried = retry_failed_samples(
            storage, shards_uri, retry_uri, options, on_output=log, exclude_ids=blocked_ids, progress=log
        )
    shards = committed_shards(storage, shards_uri)
    input_ids = input_table[SAMPLE_ID]
    opted_out = meta.filter(pc.invert(pc.is_in(meta[SAMPLE_ID], value_set=input_ids))).select([SAMPLE_ID])
    resolved = mark_opted_out(resolve_samples(storage, shards, input_table, opted_out=opted_out), blocked_ids)
    samples_uri = attempt.uri("samples.parquet")
    with storage.open(samples_uri, "wb") as handle:
        pq.write_table(resolved, handle)
    summary = summarize(resolved, shards, seconds)
    summary["retried_now"] = retried
    files = [attempt.entry(samples_uri, rows=resolved.num_rows)]
    for uri in storage.find(f"{prefix}/input"):
        files.append(attempt.entry(uri))
    for shard in shards:
        files.append(attempt.entry(shard.parquet_uri, rows=shard.count))
        files.append(attempt.entry(shard.stats_uri))
        if shard.tar_uri:
            files.append(attempt.entry(shard.tar_uri, hash_content=False))
    return PartDownload(Written(files, rows=resolved.num_rows, extra=summary), summary)


def drop_rows_with_ids(storage: Storage, uri: str, ids: pa.Array, id_column: str = "sample_id") -> int:
    """Rewrite a parquet without the rows whose id is in ``ids``; returns how many were dropped."""
    table = read_parquet(storage, uri)
    mask = pc.is_in(table[id_column], value_set=ids)
    dropped = int(pc.sum(mask).as_py() or 0)
    if dropped:
        with storage.open(uri, "wb") as handle:
            pq.write_table(table.filter(pc.invert(mask)), handle)
    return dropped
