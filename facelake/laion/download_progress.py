"""Progress of a running img2dataset download: finished shards (their ``_stats.json``) counted while it runs."""

from __future__ import annotations

import math
import threading

import pyarrow.parquet as pq

from facelake.lake.progress import Progress, Report
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import SHARD_FILE

POLL_S = 5.0


def finished_shards(storage: Storage, folder: str) -> int:
    """How many shards of ``folder`` have their ``_stats.json`` (img2dataset writes it when a shard ends)."""
    if not storage.exists(folder):
        return 0
    names = (uri.rstrip("/").rsplit("/", 1)[-1] for uri in storage.listdir(folder))
    return sum(1 for name in names if (m := SHARD_FILE.match(name)) and m.group(2) == "_stats.json")


def expected_shards(storage: Storage, input_uri: str, per_shard: int) -> int:
    """Shards img2dataset will write for an input parquet: its rows over ``number_sample_per_shard``."""
    with storage.open(input_uri, "rb") as handle:
        rows = pq.ParquetFile(handle).metadata.num_rows
    return math.ceil(rows / per_shard)


class ShardWatcher:
    """A thread that reports finished shards every :data:`POLL_S` seconds (as a :class:`Progress` line at
    least every 5 % or 30 s) while the download runs; use as a context manager around the download."""

    def __init__(
        self, storage: Storage, folder: str, new_shards: int, report: Report | None, *, extend: bool
    ) -> None:
        self.storage, self.folder = storage, folder
        self.baseline = finished_shards(storage, folder)
        total = new_shards + (self.baseline if extend else 0)
        where = "/".join(folder.rstrip("/").split("/")[-3:-1])  # e.g. images/00000
        self.progress = Progress(f"download {where}", total, report, unit="shards")
        self.progress.advance(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="shard-watcher", daemon=True)

    def _count(self) -> None:
        grown = finished_shards(self.storage, self.folder) - self.progress.done
        if grown > 0:
            self.progress.advance(grown)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            self._count()

    def __enter__(self) -> ShardWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._count()
        self.progress.finish()
