"""img2dataset's shard files and their commit rule.

img2dataset writes, per shard ``NNNNN``: ``NNNNN.tar`` (webdataset: key.jpg/.txt/.json),
``NNNNN.parquet`` (one row per input sample: status, error_message, sizes, hash, saved columns) and,
LAST, ``NNNNN_stats.json``. A shard is committed iff its ``_stats.json`` exists (that is also what
img2dataset's incremental mode skips). Anything else with a shard's number is left over from a crash.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import SHARD_FILE

STATS_SUFFIX = "_stats.json"
TMP_FOLDER = "_tmp"


class DownloadIntegrityError(FacelakeError):
    """The shards do not account for the input: a sample is missing, unknown, or a shard is incomplete."""


@dataclass(frozen=True)
class Shard:
    """One committed img2dataset shard and the counts of its ``_stats.json``."""

    shard_id: int
    stats_uri: str
    parquet_uri: str
    tar_uri: str | None
    count: int
    successes: int
    failed_to_download: int
    failed_to_resize: int
    duration_s: float
    tar_bytes: int


def _files_by_shard(storage: Storage, folder: str) -> tuple[dict[int, dict[str, str]], list[str]]:
    """Shard files grouped by id (suffix -> uri), and the other entries of the folder."""
    shards: dict[int, dict[str, str]] = defaultdict(dict)
    others = []
    for uri in storage.listdir(folder):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        match = SHARD_FILE.match(name)
        if match:
            shards[int(match.group(1))][match.group(2)] = uri
        else:
            others.append(uri)
    return shards, others


def check_shards_folder(storage: Storage, folder: str) -> None:
    """Refuse a folder holding ``.json`` files that are not shard stats: img2dataset's resume would crash."""
    _, others = _files_by_shard(storage, folder)
    foreign = [u for u in others if u.endswith(".json")]
    if foreign:
        raise InputError(
            folder,
            f"holds {', '.join(u.rsplit('/', 1)[-1] for u in foreign)}: keep the img2dataset shards folder "
            "for shards only (its resume reads every *.json as a shard's stats)",
        )


def _read_stats(storage: Storage, uri: str) -> dict:
    try:
        stats = storage.read_json(uri)
        return {
            key: stats[key] for key in ("count", "successes", "failed_to_download", "failed_to_resize")
        } | {"duration": float(stats.get("duration", 0.0))}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(uri, f"not an img2dataset shard stats file: {exc}") from exc


def committed_shards(storage: Storage, folder: str) -> list[Shard]:
    """The committed shards of a folder (those with ``_stats.json``), by shard id."""
    by_id, _ = _files_by_shard(storage, folder)
    shards = []
    for shard_id in sorted(by_id):
        files = by_id[shard_id]
        if STATS_SUFFIX not in files:
            continue
        if ".parquet" not in files:
            raise DownloadIntegrityError(f"{files[STATS_SUFFIX]}: committed shard has no .parquet beside it")
        stats = _read_stats(storage, files[STATS_SUFFIX])
        tar_uri = files.get(".tar")
        shards.append(
            Shard(
                shard_id=shard_id,
                stats_uri=files[STATS_SUFFIX],
                parquet_uri=files[".parquet"],
                tar_uri=tar_uri,
                count=int(stats["count"]),
                successes=int(stats["successes"]),
                failed_to_download=int(stats["failed_to_download"]),
                failed_to_resize=int(stats["failed_to_resize"]),
                duration_s=stats["duration"],
                tar_bytes=storage.size(tar_uri) if tar_uri else 0,
            )
        )
    return shards


def clean_uncommitted_shards(storage: Storage, folder: str) -> list[str]:
    """Delete the files of shards without ``_stats.json`` and img2dataset's ``_tmp`` folder; returns them."""
    by_id, others = _files_by_shard(storage, folder)
    deleted = [uri for files in by_id.values() if STATS_SUFFIX not in files for uri in files.values()]
    deleted += [uri for uri in others if uri.rstrip("/").rsplit("/", 1)[-1] == TMP_FOLDER]
    for uri in deleted:
        storage.rm(uri)
    return sorted(deleted)
