"""The manifest-last commit protocol (DESIGN §3).

A partition of an artifact lives at ``{root}/{dataset}/{artifact}/{partition}/``. Writers put their files
under an attempt folder (``_attempts/<id>/``) or, for shard-granular stages, under a fixed folder whose
shards commit one by one. The partition exists only once ``_manifest.json`` exists; it is written LAST and
lists every committed file in place (no copy: S3 has no rename). A crashed attempt leaves no manifest; the
next writer deletes whatever the manifest does not list and redoes the work. One writer per partition is
enforced by a lease object ``_lease.json`` (owner and expiry) created exclusively.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facelake.lake.errors import PartitionLockedError
from facelake.lake.hashing import combine_hashes, config_hash, sha256_stream
from facelake.lake.storage import Storage

MANIFEST = "_manifest.json"
LEASE = "_lease.json"
ATTEMPTS = "_attempts"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class FileEntry:
    """One committed file, relative to the partition prefix."""

    path: str
    size: int
    sha256: str | None = None
    rows: int | None = None


@dataclass
class Manifest:
    """What a committed partition holds and how it was made."""

    dataset: str
    artifact: str
    partition: str
    files: list[FileEntry]
    rows: int | None
    content_hash: str
    config: dict[str, Any]
    config_hash: str
    code_version: str
    created_at: str
    writer: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Manifest:
        value = dict(value)
        value["files"] = [FileEntry(**f) for f in value["files"]]
        return cls(**value)


@dataclass
class Lease:
    owner: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float
    process: str | None = None
    """The holder's boot id and process start time (Linux), so a pid reused after the holder died, or a
    reboot, is not mistaken for the holder; None where unknown (older leases, other systems)."""

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at


class PartitionArtifact:
    """One partition of one artifact under a storage root."""

    def __init__(self, storage: Storage, dataset: str, artifact: str, partition: str = "all") -> None:
        self.storage = storage
        self.dataset = dataset
        self.artifact = artifact
        self.partition = partition
        self.prefix = storage.uri(dataset, artifact, partition)

    def __repr__(self) -> str:
        return f"PartitionArtifact({self.prefix})"

    def uri(self, relative: str) -> str:
        return f"{self.prefix}/{relative.lstrip('/')}"

    @property
    def manifest_uri(self) -> str:
        return self.uri(MANIFEST)

    @property
    def lease_uri(self) -> str:
        return self.uri(LEASE)

    # --- reading ----------------------------------------------------------------------------
    def manifest(self) -> Manifest | None:
        """The committed manifest, or None if the partition does not exist."""
        if not self.storage.exists(self.manifest_uri):
            return None
        return Manifest.from_json(self.storage.read_json(self.manifest_uri))

    def require_manifest(self) -> Manifest:
        manifest = self.manifest()
        if manifest is None:
            raise FileNotFoundError(
                f"{self.prefix}: no committed partition (no {MANIFEST}); materialize it first"
            )
        return manifest

    def committed_with(self, cfg_hash: str, code_version: str) -> Manifest | None:
        """The manifest if it was committed with exactly this config and code version."""
        manifest = self.manifest()
        if manifest and manifest.config_hash == cfg_hash and manifest.code_version == code_version:
            return manifest
        return None

    def file_uris(self, manifest: Manifest | None = None, suffix: str = "") -> list[str]:
        manifest = manifest or self.require_manifest()
        return [self.uri(f.path) for f in manifest.files if f.path.endswith(suffix)]

    # --- writing ----------------------------------------------------------------------------
    @contextmanager
    def lease(self, owner: str, ttl_s: float = 600.0, heartbeat_s: float | None = None) -> Iterator[Lease]:
        """Hold the partition's write lease for the duration of the block, renewing it in the background."""
        lease = acquire_lease(self.storage, self.lease_uri, owner, ttl_s)
        stop = threading.Event()
        beat = heartbeat_s if heartbeat_s is not None else max(ttl_s / 3.0, 1.0)

        def renew() -> None:
            while not stop.wait(beat):
                lease.expires_at = time.time() + ttl_s
                self.storage.write_json(self.lease_uri, asdict(lease))

        thread = threading.Thread(target=renew, name=f"lease-{self.partition}", daemon=True)
        thread.start()
        try:
            yield lease
        finally:
            stop.set()
            thread.join()
            release_lease(self.storage, self.lease_uri, owner)

    def begin(self, config: dict[str, Any], code_version: str, keep: Iterable[str] = ()) -> Attempt:
        """Start a new attempt: delete what no manifest lists (a crashed attempt) and return a writer."""
        self.clean_uncommitted(keep=keep)
        return Attempt(self, config, code_version)

    def clean_uncommitted(self, keep: Iterable[str] = ()) -> list[str]:
        """Delete every file under the prefix that the manifest does not list (except lease, manifest, ``keep``)."""
        manifest = self.manifest()
        listed = {f.path for f in manifest.files} if manifest else set()
        keep_prefixes = tuple(k.rstrip("/") + "/" for k in keep)
        removed = []
        for uri in self.storage.find(self.prefix):
            rel = self.storage.relative(uri, self.prefix)
            if rel in (MANIFEST, LEASE) or rel in listed or rel.startswith(keep_prefixes):
                continue
            self.storage.rm(uri, recursive=False)
            removed.append(rel)
        return removed

    def uncommit(self) -> None:
        """Remove the manifest, so the partition no longer exists (its files become garbage)."""
        self.storage.rm(self.manifest_uri, recursive=False)


class Attempt:
    """Files written by one attempt; nothing is visible until :meth:`commit` writes the manifest."""

    def __init__(self, artifact: PartitionArtifact, config: dict[str, Any], code_version: str) -> None:
        self.artifact = artifact
        self.config = config
        self.config_hash = config_hash(config)
        self.code_version = code_version
        self.id = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.prefix = artifact.uri(f"{ATTEMPTS}/{self.id}")

    def uri(self, name: str) -> str:
        """Where this attempt writes a file named ``name``."""
        return f"{self.prefix}/{name}"

    def entry(
        self, uri: str, rows: int | None = None, sha256: str | None = None, hash_content: bool = True
    ) -> FileEntry:
        """Describe a written file; hashes its content unless a hash is given or hashing is off."""
        storage = self.artifact.storage
        if sha256 is None and hash_content:
            with storage.open(uri, "rb") as handle:
                sha256 = sha256_stream(handle)
        return FileEntry(storage.relative(uri, self.artifact.prefix), storage.size(uri), sha256, rows)

    def commit(
        self, files: list[FileEntry], rows: int | None = None, extra: dict[str, Any] | None = None
    ) -> Manifest:
        """Write the manifest LAST, then delete files of earlier attempts that it no longer lists."""
        storage = self.artifact.storage
        for f in files:
            if not storage.exists(self.artifact.uri(f.path)):
                raise FileNotFoundError(f"{self.artifact.uri(f.path)}: listed for commit but not written")
        ordered = sorted(files, key=lambda f: f.path)
        content = combine_hashes(f"{f.path}:{f.size}:{f.sha256 or ''}" for f in ordered)
        manifest = Manifest(
            dataset=self.artifact.dataset,
            artifact=self.artifact.artifact,
            partition=self.artifact.partition,
            files=ordered,
            rows=rows,
            content_hash=content,
            config=self.config,
            config_hash=self.config_hash,
            code_version=self.code_version,
            created_at=utcnow().isoformat(),
            writer=f"{socket.gethostname()}:{os.getpid()}:{self.id}",
            extra=extra or {},
        )
        storage.write_json(self.artifact.manifest_uri, manifest.to_json())
        self.artifact.clean_uncommitted(keep=())
        return manifest


def acquire_lease(storage: Storage, uri: str, owner: str, ttl_s: float) -> Lease:
    """Create the lease exclusively, or take over an expired one or one whose process on this host is gone
    (a killed run); raise if another owner holds it."""
    for _ in range(3):
        now = time.time()
        lease = Lease(
            owner, socket.gethostname(), os.getpid(), now, now + ttl_s, process_identity(os.getpid())
        )
        if storage.create_exclusive(uri, _lease_bytes(lease)):
            return lease
        try:
            held = Lease(**storage.read_json(uri))
        except FileNotFoundError:
            continue  # released between our attempt and the read: try again
        if held.owner == owner:
            storage.write_json(uri, asdict(lease))
            return lease
        if held.expired(now) or _holder_is_gone(held):
            storage.rm(uri, recursive=False)
            continue
        until = datetime.fromtimestamp(held.expires_at, UTC).isoformat(timespec="seconds")
        raise PartitionLockedError(
            f"{uri.rsplit('/', 1)[0]}: partition is being written by {held.owner} "
            f"(host {held.host}, pid {held.pid}) until {until}; refusing a second concurrent writer"
        )
    raise PartitionLockedError(f"{uri}: could not acquire the lease (contended)")


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of process ``pid`` (Linux /proc), None where unreadable: the
    same pid after a reboot or after the pid was reused has another identity."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": field 3 onward; starttime is field 22
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def _holder_is_gone(lease: Lease) -> bool:
    """The lease was taken on this host by a process that no longer exists (killed before releasing it), or
    whose pid now belongs to another process (reused, or the host rebooted)."""
    if lease.host != socket.gethostname():
        return False
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive but not ours to signal: compare identities
    if lease.process is None:
        return False
    current = process_identity(lease.pid)
    return current is not None and current != lease.process


def release_lease(storage: Storage, uri: str, owner: str) -> None:
    """Delete the lease if we still own it."""
    try:
        held = Lease(**storage.read_json(uri))
    except FileNotFoundError:
        return
    if held.owner == owner:
        storage.rm(uri, recursive=False)


def _lease_bytes(lease: Lease) -> bytes:
    import json

    return json.dumps(asdict(lease)).encode()


@dataclass
class Written:
    """What a write function produced for one attempt."""

    files: list[FileEntry]
    rows: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CommitOutcome:
    """The manifest in force after a materialization, and whether it was reused as is."""

    manifest: Manifest
    reused: bool
    seconds: float


def materialize_partition(
    artifact: PartitionArtifact,
    config: dict[str, Any],
    code_version: str,
    owner: str,
    write: Callable[[Attempt], Written],
    *,
    force: bool = False,
    lease_ttl_s: float = 600.0,
    keep: Iterable[str] = (),
) -> CommitOutcome:
    """Run ``write`` under the partition's lease and commit its files manifest-last.

    A partition already committed with the same config and code version is left as it is (a no-op)
    unless ``force``. Any exception leaves the previous manifest (or none) in force and no new one.
    """
    started = time.perf_counter()
    with artifact.lease(owner, ttl_s=lease_ttl_s):
        existing = artifact.committed_with(config_hash(config), code_version)
        if existing is not None and not force:
            return CommitOutcome(existing, True, time.perf_counter() - started)
        attempt = artifact.begin(config, code_version, keep=keep)
        written = write(attempt)
        manifest = attempt.commit(written.files, rows=written.rows, extra=written.extra)
    return CommitOutcome(manifest, False, time.perf_counter() - started)
