"""One storage root, a local path or ``s3://bucket/prefix``, behind fsspec.

Every artifact lives at ``{root}/{dataset}/{artifact}/{partition}/…`` (DESIGN §3). The same code runs on
local disk and on S3 (s3fs, configurable endpoint): callers only ever see full URIs built by
:meth:`Storage.uri`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import pyarrow.fs as pafs


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3 endpoint; empty fields fall back to the usual AWS environment variables."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None

    def fsspec_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` (no region in client_kwargs for a local endpoint)."""
        kwargs: dict[str, Any] = {}
        if self.key:
            kwargs["key"] = self.key
        if self.secret:
            kwargs["secret"] = self.secret
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        elif self.region:
            kwargs["client_kwargs"] = {"region_name": self.region}
        return kwargs

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (img2dataset workers) so their s3fs reaches the same endpoint."""
        env: dict[str, str] = {}
        if self.endpoint_url:
            env["FSSPEC_S3_ENDPOINT_URL"] = self.endpoint_url
            env["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        if self.key:
            env["AWS_ACCESS_KEY_ID"] = self.key
            env["FSSPEC_S3_KEY"] = self.key
        if self.secret:
            env["AWS_SECRET_ACCESS_KEY"] = self.secret
            env["FSSPEC_S3_SECRET"] = self.secret
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        return env


def is_remote(uri: str) -> bool:
    """True for URIs with a protocol other than the local filesystem."""
    return "://" in uri and not uri.startswith("file://")


class Storage:
    """A root URI plus the fsspec filesystem that serves it."""

    def __init__(self, root: str, s3: S3Options | None = None) -> None:
        self.s3 = s3 or S3Options()
        if is_remote(root):
            self.root = root.rstrip("/")
        else:
            self.root = os.path.abspath(root.removeprefix("file://"))
        self.protocol = self.root.split("://", 1)[0] if is_remote(self.root) else "file"
        self.fs = self._filesystem(self.protocol)

    def _filesystem(self, protocol: str) -> fsspec.AbstractFileSystem:
        if protocol == "s3":
            return fsspec.filesystem("s3", skip_instance_cache=True, **self.s3.fsspec_kwargs())
        return fsspec.filesystem(protocol)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # --- addressing -------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """Full URI of a path under the root."""
        clean = [str(p).strip("/") for p in parts if str(p).strip("/")]
        return "/".join([self.root, *clean])

    def filesystem_for(self, uri: str) -> fsspec.AbstractFileSystem:
        """The filesystem serving ``uri``: this storage's for its own protocol, fsspec's default otherwise."""
        protocol = uri.split("://", 1)[0] if is_remote(uri) else "file"
        return self.fs if protocol == self.protocol else self._filesystem(protocol)

    def relative(self, uri: str, base: str) -> str:
        """``uri`` relative to ``base`` (both full URIs)."""
        base = base.rstrip("/") + "/"
        if not uri.startswith(base):
            raise ValueError(f"{uri} is not under {base}")
        return uri[len(base) :]

    def pyarrow_filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem over the same fsspec filesystem (for pyarrow.parquet/dataset)."""
        if self.protocol == "file":
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def strip_protocol(self, uri: str) -> str:
        """The path the filesystem itself understands (``bucket/key`` on S3)."""
        return self.fs._strip_protocol(uri)

    # --- io ----------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return self.filesystem_for(uri).exists(uri)

    def open(self, uri: str, mode: str = "rb", **kwargs: Any) -> BinaryIO:
        fs = self.filesystem_for(uri)
        if "w" in mode or "x" in mode:
            parent = uri.rsplit("/", 1)[0]
            if self.protocol == "file" and not is_remote(uri):
                fs.makedirs(parent, exist_ok=True)
        return fs.open(uri, mode, **kwargs)

    def read_bytes(self, uri: str) -> bytes:
        with self.open(uri, "rb") as handle:
            return handle.read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object; on local disk through a temporary file and an atomic rename."""
        if self.protocol == "file" and not is_remote(uri):
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            tmp = f"{uri}.tmp-{os.getpid()}"
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, uri)
        else:
            self.filesystem_for(uri).pipe_file(uri, data)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Create ``uri`` only if it does not exist; False if it already did (local O_EXCL, S3 If-None-Match)."""
        if self.protocol == "file" and not is_remote(uri):
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            try:
                fd = os.open(uri, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        try:
            self.filesystem_for(uri).pipe_file(uri, data, mode="create")
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or "PreconditionFailed" in str(exc) or "412" in str(exc):
                return False
            raise
        return True

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, value: Any) -> None:
        self.write_bytes(uri, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def fingerprint(self, uri: str) -> str:
        """Size and modification stamp (ETag on S3) of a file: changes when the file is replaced."""
        info = self.filesystem_for(uri).info(uri)
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created") or ""
        return f"{info.get('size')}-{str(stamp).strip(chr(34))}"

    def size(self, uri: str) -> int:
        return int(self.filesystem_for(uri).size(uri))

    def listdir(self, uri: str) -> list[str]:
        """Full URIs of the direct children of a folder; empty if it does not exist."""
        fs = self.filesystem_for(uri)
        try:
            entries = (
                fs.ls(uri, detail=False, refresh=True)
                if self.protocol != "file"
                else fs.ls(uri, detail=False)
            )
        except FileNotFoundError:
            return []
        return sorted(self._to_uri(e) for e in entries)

    def find(self, uri: str) -> list[str]:
        """Full URIs of every file below a folder; empty if it does not exist."""
        fs = self.filesystem_for(uri)
        if self.protocol != "file":
            fs.invalidate_cache(self.strip_protocol(uri))
        try:
            return sorted(self._to_uri(e) for e in fs.find(uri))
        except FileNotFoundError:
            return []

    def rm(self, uri: str, recursive: bool = True) -> None:
        """Delete a file or folder; absent is fine."""
        fs = self.filesystem_for(uri)
        try:
            if fs.exists(uri):
                fs.rm(uri, recursive=recursive)
        except FileNotFoundError:
            pass

    def put_file(self, local_path: str, uri: str) -> None:
        """Upload (or copy) a local file to ``uri``."""
        if self.protocol == "file" and not is_remote(uri):
            os.makedirs(os.path.dirname(uri), exist_ok=True)
        self.filesystem_for(uri).put_file(local_path, uri)

    def _to_uri(self, path: str) -> str:
        if self.protocol == "file":
            return path
        return f"{self.protocol}://{path}" if "://" not in path else path

    @contextmanager
    def subprocess_env(self) -> Iterator[dict[str, str]]:
        """Temporarily export the S3 endpoint and credentials for libraries and subprocesses."""
        extra = self.s3.env() if self.protocol == "s3" else {}
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            yield extra
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


def expand_source(template: str, sources: str, **fields: object) -> str:
    """Fill a source template (``{sources}`` = the sources root, plus ``fields``); relative local paths
    become absolute."""
    uri = template.format(sources=sources.rstrip("/"), **fields)
    return uri if "://" in uri else os.path.abspath(uri)
