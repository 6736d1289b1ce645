"""The LAION-Face download stage against the real img2dataset and a real local HTTP server.

A fixture part in the laion schema points at real face JPEGs, 404s, a non-image body, a slow URL and an
``X-Robots-Tag: noai`` response; some rows are opted out before the download. Every input SAMPLE_ID must
end in exactly one status, with exact counts, on local disk and on a local S3 server; a server that dies
mid-run and a killed download are recovered by retrying only what is missing.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import facelake
from facelake.laion.download import (
    DownloadError,
    DownloadIntegrityError,
    DownloadOptions,
    clean_uncommitted_shards,
    committed_shards,
    failed_samples,
    resolve_samples,
    retry_failed_samples,
    run_img2dataset,
    summarize,
    write_download_input,
)
from facelake.laion.optout import BLOCKLIST_SCHEMA, split_blocked
from facelake.lake.errors import InputError
from facelake.lake.storage import S3Options, Storage
from synthetic.face_photos import FaceCrop, varied_crops
from synthetic.image_server import ImageServer
from synthetic.laion_meta import META_SCHEMA

ROBOTS_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"
# category -> (final status, error message substring)
EXPECTED = {
    "face": ("success", None),
    "not_found": ("failed_to_download", "HTTP Error 404: Not Found"),
    "html": ("failed_to_resize", "Image decoding error"),
    "slow": ("failed_to_download", "timed out"),
    "noai": ("failed_to_download", ROBOTS_MESSAGE),
    "opted_out": ("opted_out", None),
}
MAIN_CATEGORIES = {"face": 36, "not_found": 4, "html": 2, "slow": 1, "noai": 2, "opted_out": 3}
OPTIONS = DownloadOptions(processes=2, threads=4, timeout=2, retries=0, number_sample_per_shard=10)
SLOW_DELAY_S = 4.0
PROJECT_ROOT = str(Path(facelake.__file__).resolve().parents[1])


@dataclass
class Part:
    """A fixture part: all rows, the rows sent to the downloader, the held-back ones, and what each is."""

    table: pa.Table
    kept: pa.Table
    blocked: pa.Table
    category: dict[int, str]
    path: dict[int, str]
    crop: dict[int, FaceCrop]

    def ids(self, *categories: str) -> set[int]:
        return {i for i, c in self.category.items() if c in categories}

    def paths(self, ids: set[int]) -> set[str]:
        return {self.path[i] for i in ids}


def build_part(server: ImageServer, categories: list[str], seed: int) -> Part:
    """Register one route per row on ``server`` and return the laion-schema table pointing at them."""
    rng = np.random.default_rng(seed)
    n = len(categories)
    ids = 7_000_000 + np.cumsum(rng.integers(1, 5, n))
    n_faces = (
        categories.count("face")
        + categories.count("slow")
        + categories.count("noai")
        + categories.count("opted_out")
    )
    crops = iter(
        varied_crops("astronaut", n_faces // 2 + 1, seed) + varied_crops("grace_hopper", n_faces, seed)
    )
    urls, category, path, crop_of = [], {}, {}, {}
    for sample_id, kind in zip(ids.tolist(), categories, strict=True):
        route = f"p{seed}/{kind}/{sample_id}.jpg"
        category[sample_id], path[sample_id] = kind, "/" + route
        if kind == "not_found":
            url = (
                server.add_not_found(route) if sample_id % 2 else server.url(route)
            )  # explicit and unregistered
        elif kind == "html":
            url = server.add_html(route)
        else:
            crop_of[sample_id] = next(crops)
            jpeg = crop_of[sample_id].jpeg
            if kind == "slow":
                url = server.add_slow(route, jpeg, SLOW_DELAY_S)
            elif kind == "noai":
                url = server.add_noai(route, jpeg)
            else:
                url = server.add_image(route, jpeg)
        urls.append(url)
    table = pa.table(
        {
            "SAMPLE_ID": pa.array(ids, pa.int64()),
            "URL": urls,
            "TEXT": [f"a photo of person {i}" for i in ids],
            "HEIGHT": pa.array([c.height if c else None for c in map(crop_of.get, ids.tolist())], pa.int64()),
            "WIDTH": pa.array([c.width if c else None for c in map(crop_of.get, ids.tolist())], pa.int64()),
            "LICENSE": ["?"] * n,
            "NSFW": rng.choice(["UNLIKELY", "UNSURE"], n).tolist(),
            "similarity": rng.uniform(0.3, 0.45, n),
        },
        schema=META_SCHEMA,
    )
    opted_out = [i for i, c in category.items() if c == "opted_out"]
    blocklist = pa.table(
        {"sample_id": opted_out, "url": [None] * len(opted_out), "source": ["test"] * len(opted_out)},
        schema=BLOCKLIST_SCHEMA,
    )
    kept, blocked = split_blocked(table, blocklist)
    return Part(table, kept, blocked, category, path, crop_of)


def main_categories(seed: int) -> list[str]:
    kinds = [kind for kind, count in MAIN_CATEGORIES.items() for _ in range(count)]
    return [kinds[i] for i in np.random.default_rng(seed).permutation(len(kinds))]


def write_input(storage: Storage, part: Part, name: str = "input.parquet") -> str:
    uri = storage.uri("input", name)
    write_download_input(storage, part.kept, uri)
    return uri


def status_of(resolved: pa.Table) -> dict[int, str]:
    return dict(zip(resolved["sample_id"].to_pylist(), resolved["status"].to_pylist(), strict=True))


def assert_expected_statuses(resolved: pa.Table, part: Part) -> None:
    """Every SAMPLE_ID of the part exactly once, with the status and error its category implies."""
    ids = resolved["sample_id"].to_pylist()
    assert sorted(ids) == sorted(part.category) and len(set(ids)) == len(ids)
    errors = dict(zip(ids, resolved["error_message"].to_pylist(), strict=True))
    for sample_id, status in status_of(resolved).items():
        want_status, want_error = EXPECTED[part.category[sample_id]]
        assert status == want_status, (sample_id, part.category[sample_id], status, errors[sample_id])
        if want_error is None:
            assert errors[sample_id] is None
        else:
            assert want_error in errors[sample_id]


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def part(server):
    return build_part(server, main_categories(seed=1), seed=1)


@dataclass
class LocalRun:
    storage: Storage
    input_uri: str
    shards_uri: str
    seconds: float
    requested: list[str]
    progress: list[str]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, server, part):
    storage = Storage(str(tmp_path_factory.mktemp("laion")))
    input_uri = write_input(storage, part)
    shards_uri = storage.uri("laion_face_images", "00000", "shards")
    since, lines = time.time(), []
    run = run_img2dataset(storage, input_uri, shards_uri, OPTIONS, progress=lines.append)
    return LocalRun(storage, input_uri, shards_uri, run.seconds, server.requested_paths(since), lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_storage():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        options = S3Options(endpoint_url=f"http://127.0.0.1:{port}", key="testing", secret="testing")
        storage = Storage("s3://facelake-test/root", options)
        storage.fs.mkdir("facelake-test")
        yield storage
    finally:
        moto.stop()


# --- one download, accounted ---------------------------------------------------------------------
def test_every_sample_ends_in_exactly_one_status_with_exact_counts(local_run, part):
    storage = local_run.storage
    shards = committed_shards(storage, local_run.shards_uri)
    assert [s.shard_id for s in shards] == [0, 1, 2, 3, 4]  # 45 rows sent, 10 per shard
    assert sum(s.count for s in shards) == part.kept.num_rows == 45
    resolved = resolve_samples(storage, shards, part.kept, opted_out=part.blocked)
    assert_expected_statuses(resolved, part)
    counts = Counter(status_of(resolved).values())
    assert counts == {"success": 36, "failed_to_download": 7, "failed_to_resize": 2, "opted_out": 3}
    assert sum(s.successes for s in shards) == 36
    assert sum(s.failed_to_resize for s in shards) == 2

    # opted-out rows were never requested; every other row exactly once
    assert not set(local_run.requested) & part.paths(part.ids("opted_out"))
    assert sorted(local_run.requested) == sorted(part.paths(set(part.category) - part.ids("opted_out")))

    summary = summarize(resolved, shards, local_run.seconds)
    assert summary["by_status"] == dict(sorted(counts.items()))
    assert summary["samples"] == 48 and summary["success_rate"] == 36 / 45
    assert summary["robots_disallowed"] == 2 and summary["retried_samples"] == 0
    assert summary["top_errors"]["HTTP Error 404: Not Found"] == 4
    assert summary["tar_bytes"] == sum(os.path.getsize(s.tar_uri) for s in shards) > 0
    rate = 36 / local_run.seconds  # the summary's formula, not a timing bound
    assert summary["images_per_s"] == rate
    assert not os.path.exists(f"{local_run.shards_uri}/_tmp")


def test_webdataset_tars_hold_the_downloaded_faces(local_run, part):
    shards = committed_shards(local_run.storage, local_run.shards_uri)
    resolved = resolve_samples(local_run.storage, shards, part.kept, part.blocked)
    key_of = {
        k: i for i, k in zip(resolved["sample_id"].to_pylist(), resolved["key"].to_pylist(), strict=True) if k
    }
    seen = set()
    for shard in shards:
        with tarfile.open(shard.tar_uri) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = {name.split(".")[0] for name in members}
        for key in keys:
            sample_id = key_of[key]
            meta = json.loads(members[f"{key}.json"])
            crop = part.crop[sample_id]
            image = Image.open(io.BytesIO(members[f"{key}.jpg"]))
            assert meta["SAMPLE_ID"] == sample_id and meta["status"] == "success"
            assert image.size == (crop.width, crop.height) == (meta["width"], meta["height"])
            assert members[f"{key}.txt"].decode() == f"a photo of person {sample_id}"
            seen.add(sample_id)
        rows = pq.read_table(shard.parquet_uri)
        assert {
            "status",
            "error_message",
            "sha256",
            "key",
            "SAMPLE_ID",
            "NSFW",
            "similarity",
            "LICENSE",
        } <= set(rows.column_names)
    assert seen == part.ids("face")


def test_failed_samples_are_valid_retry_inputs(local_run, part):
    shards = committed_shards(local_run.storage, local_run.shards_uri)
    failed = failed_samples(local_run.storage, shards, OPTIONS)
    assert failed.column_names == ["SAMPLE_ID", "URL", "TEXT", "NSFW", "similarity", "LICENSE"]
    assert set(failed["SAMPLE_ID"].to_pylist()) == part.ids("not_found", "html", "slow", "noai")
    by_id = {r["SAMPLE_ID"]: r for r in part.kept.to_pylist()}
    for row in failed.to_pylist():
        assert {k: row[k] for k in failed.column_names} == {
            k: by_id[row["SAMPLE_ID"]][k] for k in failed.column_names
        }
    transient = failed_samples(local_run.storage, shards, OPTIONS, include_permanent=False)
    assert set(transient["SAMPLE_ID"].to_pylist()) == part.ids("slow")


def test_progress_counts_finished_shards_to_the_total(local_run):
    shards = len(committed_shards(local_run.storage, local_run.shards_uri))
    assert shards > 1
    assert local_run.progress[-1].startswith(
        f"download laion_face_images/00000: {shards}/{shards} shards (100.0%), "
    )
    assert all(" shards/s" in line for line in local_run.progress)


def test_rerunning_a_complete_part_requests_nothing(local_run, server):
    before = [(s.shard_id, s.stats_uri) for s in committed_shards(local_run.storage, local_run.shards_uri)]
    since, lines = time.time(), []
    run_img2dataset(
        local_run.storage, local_run.input_uri, local_run.shards_uri, OPTIONS, progress=lines.append
    )
    assert server.requested_paths(since) == []
    assert lines == [lines[0]] and lines[0].startswith(
        f"download laion_face_images/00000: {len(before)}/{len(before)} shards"
    )
    assert [
        (s.shard_id, s.stats_uri) for s in committed_shards(local_run.storage, local_run.shards_uri)
    ] == before


def test_accounting_refuses_inputs_the_shards_do_not_match(local_run, part):
    storage = local_run.storage
    shards = committed_shards(storage, local_run.shards_uri)
    extra = pa.concat_tables(
        [part.kept, part.kept.slice(0, 1).set_column(0, "SAMPLE_ID", pa.array([1], pa.int64()))]
    )
    with pytest.raises(DownloadIntegrityError, match="1 input SAMPLE_IDs are in no committed shard"):
        resolve_samples(storage, shards, extra)
    with pytest.raises(DownloadIntegrityError, match="not in the input"):
        resolve_samples(storage, shards, part.kept.slice(1))
    with pytest.raises(DownloadIntegrityError, match="opted-out samples were given to the downloader"):
        resolve_samples(storage, shards, part.kept, opted_out=part.kept.slice(0, 2))
    with pytest.raises(InputError, match="duplicate SAMPLE_IDs"):
        resolve_samples(storage, shards, pa.concat_tables([part.kept, part.kept.slice(0, 1)]))
    with pytest.raises(DownloadIntegrityError, match="in no committed shard"):
        resolve_samples(storage, shards[:-1], part.kept)


def test_bad_inputs_and_options_are_refused_with_the_file_named(tmp_path, part):
    storage = Storage(str(tmp_path))
    good = write_input(storage, part)
    shards = storage.uri("shards")
    with pytest.raises(InputError, match=r"missing\.parquet: download input parquet not found"):
        run_img2dataset(storage, storage.uri("missing.parquet"), shards, OPTIONS)
    storage.write_bytes(storage.uri("garbage.parquet"), b"not parquet")
    with pytest.raises(InputError, match=r"garbage\.parquet: not a readable parquet file"):
        run_img2dataset(storage, storage.uri("garbage.parquet"), shards, OPTIONS)
    write_download_input(storage, part.kept.drop_columns(["TEXT", "NSFW"]), storage.uri("narrow.parquet"))
    with pytest.raises(InputError, match=r"narrow.parquet: missing column\(s\) \['TEXT', 'NSFW'\]"):
        run_img2dataset(storage, storage.uri("narrow.parquet"), shards, OPTIONS)
    storage.write_json(storage.uri("shards", "_manifest.json"), {})
    with pytest.raises(InputError, match=r"_manifest\.json.*shards only"):
        run_img2dataset(storage, good, shards, OPTIONS)
    with pytest.raises(ValueError, match="must keep SAMPLE_ID"):
        DownloadOptions(save_additional_columns=("NSFW",))
    with pytest.raises(ValueError, match="mode must be"):
        run_img2dataset(storage, good, storage.uri("other"), OPTIONS, mode="overwrite")


def test_img2dataset_failure_is_raised_with_its_output(tmp_path, part):
    storage = Storage(str(tmp_path))
    with pytest.raises(DownloadError, match=r"(?s)exited with 1.*Invalid encode format bmp"):
        run_img2dataset(
            storage, write_input(storage, part), storage.uri("shards"), DownloadOptions(encode_format="bmp")
        )


# --- failures mid-run ----------------------------------------------------------------------------
def test_server_death_mid_run_then_retry_requests_only_the_failed_samples(tmp_path):
    storage = Storage(str(tmp_path))
    with ImageServer() as server:
        part = build_part(server, main_categories(seed=2), seed=2)
        input_uri = write_input(storage, part)
        shards_uri = storage.uri("shards")
        options = DownloadOptions(processes=1, threads=4, timeout=2, number_sample_per_shard=10)
        server.die_after(15)
        run_img2dataset(storage, input_uri, shards_uri, options)
        assert not server.alive

        first = committed_shards(storage, shards_uri)
        resolved = resolve_samples(storage, first, part.kept, part.blocked)  # every sample has a status
        statuses = status_of(resolved)
        assert len(statuses) == 48
        succeeded = {i for i, s in statuses.items() if s == "success"}
        assert 0 < len(succeeded) <= 15
        transient = set(
            failed_samples(storage, first, options, include_permanent=False)["SAMPLE_ID"].to_pylist()
        )
        assert part.ids("face") - succeeded <= transient  # faces lost to the dead server will be retried

        server.start()  # the host comes back, same port
        since = time.time()
        retried = retry_failed_samples(
            storage, shards_uri, storage.uri("retry", "attempt-1.parquet"), options
        )
        requested = server.requested_paths(since)
        assert retried == len(transient)
        assert sorted(requested) == sorted(part.paths(transient))  # only the failed ones, each once
        assert not set(requested) & part.paths(succeeded)

    shards = committed_shards(storage, shards_uri)
    assert [s.shard_id for s in shards][: len(first)] == [s.shard_id for s in first]
    assert min(s.shard_id for s in shards[len(first) :]) == max(s.shard_id for s in first) + 1
    final = resolve_samples(storage, shards, part.kept, part.blocked)
    assert_expected_statuses(final, part)
    attempts = dict(zip(final["sample_id"].to_pylist(), final["attempts"].to_pylist(), strict=True))
    assert {i for i, a in attempts.items() if a == 2} == transient
    assert summarize(final, shards, 1.0)["retried_samples"] == len(transient)
    # the union of successes over all shards: every face exactly once, nothing else
    rows = pa.concat_tables(pq.read_table(s.parquet_uri, columns=["SAMPLE_ID", "status"]) for s in shards)
    successes = Counter(i for i, st in zip(*rows.to_pydict().values(), strict=True) if st == "success")
    assert set(successes) == part.ids("face") and set(successes.values()) == {1}


CRASH_SCRIPT = """
import sys
from facelake.laion.download import DownloadOptions, run_img2dataset
from facelake.lake.storage import Storage
options = DownloadOptions(processes=1, threads=4, timeout=30, number_sample_per_shard=10)
run_img2dataset(Storage(sys.argv[1]), sys.argv[2], sys.argv[3], options)
"""


def test_killed_download_resumes_and_redoes_only_unfinished_shards(tmp_path):
    storage = Storage(str(tmp_path))
    with ImageServer() as server:
        # shard 0: fast faces; shard 1 blocks on a very slow URL; shard 2: fast faces
        part = build_part(server, ["face"] * 12 + ["slow"] + ["face"] * 17, seed=3)
        (slow_id,) = part.ids("slow")
        server.add_slow(part.path[slow_id], part.crop[slow_id].jpeg, delay_s=60)
        input_uri, shards_uri = write_input(storage, part), storage.uri("shards")
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, [PROJECT_ROOT, os.environ.get("PYTHONPATH")]))
        }
        process = subprocess.Popen(
            [sys.executable, "-c", CRASH_SCRIPT, storage.root, input_uri, shards_uri],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 90
            while not os.path.exists(f"{shards_uri}/00000_stats.json"):
                assert process.poll() is None and time.time() < deadline, (
                    "the download never committed shard 0"
                )
                time.sleep(0.05)
            while part.path[slow_id] not in server.requested_paths():
                assert time.time() < deadline, "shard 1 never reached the slow URL"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

        committed = committed_shards(storage, shards_uri)
        assert [s.shard_id for s in committed] == [0]
        assert not os.path.exists(f"{shards_uri}/00001_stats.json")
        deleted = clean_uncommitted_shards(storage, shards_uri)
        assert {f"{shards_uri}/00001.tar", f"{shards_uri}/00001.parquet", f"{shards_uri}/_tmp"} <= set(
            deleted
        )
        assert sorted(os.listdir(shards_uri)) == ["00000.parquet", "00000.tar", "00000_stats.json"]

        server.add_image(part.path[slow_id], part.crop[slow_id].jpeg)  # the slow host recovers
        wait_until_quiet(server)  # connections the killed client left in the accept queue get logged first
        since = time.time()
        run_img2dataset(storage, input_uri, shards_uri, OPTIONS)
        requested = server.requested_paths(since)

    shard0_ids = set(part.kept["SAMPLE_ID"].to_pylist()[:10])
    assert not set(requested) & part.paths(shard0_ids)
    assert set(requested) == part.paths(set(part.category) - shard0_ids)
    shards = committed_shards(storage, shards_uri)
    assert [s.shard_id for s in shards] == [0, 1, 2]
    resolved = resolve_samples(storage, shards, part.kept)
    assert Counter(status_of(resolved).values()) == {"success": 30}
    assert resolved["attempts"].to_pylist() == [1] * 30


def wait_until_quiet(server, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until the server has logged no request for ``quiet_s`` (a killed client's queued connections are
    still answered, and logged, after it died; on a loaded machine that can take a moment)."""
    deadline = time.time() + limit_s
    seen = len(server.requests)
    quiet_since = time.time()
    while time.time() < deadline:
        time.sleep(0.1)
        now = len(server.requests)
        if now != seen:
            seen, quiet_since = now, time.time()
        elif time.time() - quiet_since >= quiet_s:
            return


# --- S3 ------------------------------------------------------------------------------------------
def test_download_to_s3_gives_the_same_accounting_as_local(s3_storage, local_run, part):
    input_uri = write_input(s3_storage, part)
    shards_uri = s3_storage.uri("laion_face_images", "00000", "shards")
    run = run_img2dataset(s3_storage, input_uri, shards_uri, OPTIONS)
    shards = committed_shards(s3_storage, shards_uri)
    assert shards[0].stats_uri == f"{shards_uri}/00000_stats.json"
    resolved = resolve_samples(s3_storage, shards, part.kept, part.blocked)
    assert_expected_statuses(resolved, part)

    local_shards = committed_shards(local_run.storage, local_run.shards_uri)
    local = resolve_samples(local_run.storage, local_shards, part.kept, part.blocked)
    assert status_of(resolved) == status_of(local)
    assert resolved["key"].to_pylist() == local["key"].to_pylist()
    s3_summary, local_summary = summarize(resolved, shards, run.seconds), summarize(local, local_shards, 1.0)
    for field in ("samples", "by_status", "success_rate", "robots_disallowed", "top_errors", "shards"):
        assert s3_summary[field] == local_summary[field]
    assert not s3_storage.exists(f"{shards_uri}/_tmp")
    assert clean_uncommitted_shards(s3_storage, shards_uri) == []
