"""The manifest-last commit protocol and the partition lease, on local disk and on S3."""

from __future__ import annotations

import threading

import pytest

from facelake.lake.commit import MANIFEST, PartitionArtifact, Written, materialize_partition
from facelake.lake.errors import PartitionLockedError
from facelake.lake.storage import Storage


def write_text(attempt, name: str, text: str):
    uri = attempt.uri(name)
    attempt.artifact.storage.write_bytes(uri, text.encode())
    return attempt.entry(uri, rows=len(text))


def test_commit_writes_manifest_last_and_lists_files(any_storage: Storage):
    part = PartitionArtifact(any_storage, "demo", "things", "00000")
    outcome = materialize_partition(
        part, {"a": 1}, "v1", "run-1", lambda att: Written([write_text(att, "x.txt", "hello")], rows=5)
    )
    assert not outcome.reused
    manifest = part.require_manifest()
    assert manifest.rows == 5 and manifest.config == {"a": 1}
    [uri] = part.file_uris()
    assert any_storage.read_bytes(uri) == b"hello"
    assert len(manifest.content_hash) == 64
    assert not any_storage.exists(part.lease_uri), "lease released after commit"


def test_same_config_is_a_noop_and_force_or_new_config_rewrites(any_storage: Storage):
    part = PartitionArtifact(any_storage, "demo", "things", "00000")
    calls = []

    def write(att):
        calls.append(att.id)
        return Written([write_text(att, "x.txt", f"call {len(calls)}")])

    first = materialize_partition(part, {"a": 1}, "v1", "r", write)
    again = materialize_partition(part, {"a": 1}, "v1", "r", write)
    assert again.reused and again.manifest.content_hash == first.manifest.content_hash and len(calls) == 1
    forced = materialize_partition(part, {"a": 1}, "v1", "r", write, force=True)
    assert not forced.reused and len(calls) == 2
    changed = materialize_partition(part, {"a": 2}, "v1", "r", write)
    assert not changed.reused and len(calls) == 3
    new_code = materialize_partition(part, {"a": 2}, "v2", "r", write)
    assert not new_code.reused and len(calls) == 4
    # only the files of the last attempt remain
    files = [any_storage.relative(u, part.prefix) for u in any_storage.find(part.prefix)]
    assert sorted(files) == sorted([MANIFEST, *[f.path for f in new_code.manifest.files]])


def test_crash_leaves_no_manifest_and_next_run_cleans_up(any_storage: Storage):
    part = PartitionArtifact(any_storage, "demo", "things", "00000")

    def crashing(att):
        write_text(att, "half.txt", "partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        materialize_partition(part, {"a": 1}, "v1", "r", crashing)
    assert part.manifest() is None
    assert any(u.endswith("half.txt") for u in any_storage.find(part.prefix))
    outcome = materialize_partition(
        part, {"a": 1}, "v1", "r", lambda a: Written([write_text(a, "ok.txt", "ok")])
    )
    remaining = [any_storage.relative(u, part.prefix) for u in any_storage.find(part.prefix)]
    assert not any(r.endswith("half.txt") for r in remaining)
    assert sorted(remaining) == sorted([MANIFEST, outcome.manifest.files[0].path])


def test_failed_rewrite_keeps_the_previous_commit(local_storage: Storage):
    part = PartitionArtifact(local_storage, "demo", "things", "00000")
    good = materialize_partition(part, {"a": 1}, "v1", "r", lambda a: Written([write_text(a, "x.txt", "v1")]))

    def crashing(att):
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        materialize_partition(part, {"a": 2}, "v1", "r", crashing)
    assert part.require_manifest().content_hash == good.manifest.content_hash
    assert local_storage.read_bytes(part.file_uris()[0]) == b"v1"


def test_second_writer_fails_clearly_while_first_holds_the_lease(any_storage: Storage):
    part = PartitionArtifact(any_storage, "demo", "things", "00000")
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(att):
        inside.set()
        assert release.wait(30)
        return Written([write_text(att, "x.txt", "first")])

    def first():
        try:
            materialize_partition(part, {"a": 1}, "v1", "scheduled-run", slow, lease_ttl_s=60)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(30)
    with pytest.raises(PartitionLockedError, match="scheduled-run"):
        materialize_partition(part, {"a": 1}, "v1", "manual-run", lambda a: Written([]), lease_ttl_s=60)
    release.set()
    thread.join()
    assert not errors
    assert any_storage.read_bytes(part.file_uris()[0]) == b"first"


def test_expired_lease_is_taken_over(local_storage: Storage):
    part = PartitionArtifact(local_storage, "demo", "things", "00000")
    local_storage.write_json(
        part.lease_uri, {"owner": "dead-run", "host": "h", "pid": 1, "acquired_at": 0.0, "expires_at": 1.0}
    )
    outcome = materialize_partition(part, {}, "v1", "new-run", lambda a: Written([write_text(a, "x", "y")]))
    assert not outcome.reused and part.manifest() is not None


def test_lease_of_a_killed_writer_on_this_host_is_taken_over(local_storage: Storage):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    part = PartitionArtifact(local_storage, "demo", "things", "00000")
    far_future = 4_102_444_800.0
    local_storage.write_json(
        part.lease_uri,
        {
            "owner": "killed-run",
            "host": socket.gethostname(),
            "pid": dead.pid,
            "acquired_at": 0.0,
            "expires_at": far_future,
        },
    )
    outcome = materialize_partition(part, {}, "v1", "rerun", lambda a: Written([write_text(a, "x", "y")]))
    assert not outcome.reused and part.manifest() is not None


def test_live_lease_on_another_host_is_respected(local_storage: Storage):
    part = PartitionArtifact(local_storage, "demo", "things", "00000")
    local_storage.write_json(
        part.lease_uri,
        {
            "owner": "remote-run",
            "host": "other-host",
            "pid": 1,
            "acquired_at": 0.0,
            "expires_at": 4_102_444_800.0,
        },
    )
    with pytest.raises(PartitionLockedError, match="remote-run"):
        materialize_partition(part, {}, "v1", "local-run", lambda a: Written([]))


def _live_lease(part: PartitionArtifact, pid: int, process: str | None) -> None:
    import socket

    part.storage.write_json(
        part.lease_uri,
        {
            "owner": "holder",
            "host": socket.gethostname(),
            "pid": pid,
            "acquired_at": 0.0,
            "expires_at": 4_102_444_800.0,
            "process": process,
        },
    )


def test_a_reused_pid_is_not_mistaken_for_the_lease_holder(local_storage: Storage):
    """The pid is alive (this process) but its boot id / start time is not the holder's: taken over."""
    import os

    from facelake.lake.commit import process_identity

    part = PartitionArtifact(local_storage, "demo", "things", "00000")
    mine = process_identity(os.getpid())
    assert mine is not None and mine.count(":") == 1
    _live_lease(part, os.getpid(), mine.split(":")[0] + ":1")  # same boot, another start time
    outcome = materialize_partition(part, {}, "v1", "rerun", lambda a: Written([write_text(a, "x", "y")]))
    assert not outcome.reused and part.manifest() is not None


def test_a_live_holder_with_its_own_identity_is_respected(local_storage: Storage):
    import subprocess
    import sys

    from facelake.lake.commit import process_identity

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        part = PartitionArtifact(local_storage, "demo", "things", "00000")
        _live_lease(part, holder.pid, process_identity(holder.pid))
        with pytest.raises(PartitionLockedError, match="holder"):
            materialize_partition(part, {}, "v1", "second", lambda a: Written([]))
        _live_lease(part, holder.pid, None)  # an older lease without identity: the live pid is respected
        with pytest.raises(PartitionLockedError, match="holder"):
            materialize_partition(part, {}, "v1", "second", lambda a: Written([]))
    finally:
        holder.kill()
        holder.wait()
