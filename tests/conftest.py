"""Shared fixtures: a real local S3 server (moto), Postgres/Redis on 127.0.0.1 (fail, not skip, in CI)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from facelake.lake.storage import S3Options, Storage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def services_required() -> bool:
    return os.environ.get("FACELAKE_REQUIRE_SERVICES") == "1"


def need_service(name: str, problem: str) -> None:
    """Skip locally, fail in CI (FACELAKE_REQUIRE_SERVICES=1), when a service is not reachable."""
    message = f"{name} not reachable: {problem}"
    if services_required():
        pytest.fail(message + " (FACELAKE_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's threaded server)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_KEY, S3_SECRET = "facelake-test", "facelake-test-secret"


@pytest.fixture
def s3_storage(s3_endpoint: str) -> Storage:
    """A Storage rooted in a fresh bucket on the local S3 server."""
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    options = S3Options(endpoint_url=s3_endpoint, key=S3_KEY, secret=S3_SECRET)
    storage = Storage(f"s3://{bucket}/root", options)
    storage.fs.mkdir(bucket)
    return storage


@pytest.fixture
def local_storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "lake"))


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path) -> Storage:
    """The same test on local disk and on the local S3 server."""
    if request.param == "local":
        return Storage(str(tmp_path / "lake"))
    return request.getfixturevalue("s3_storage")


def postgres_url() -> str:
    return os.environ.get("FACELAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh database on the Postgres server on 127.0.0.1; yields its URL and drops it afterwards."""
    try:
        import psycopg2

        admin = psycopg2.connect(postgres_url(), connect_timeout=5)
    except Exception as exc:
        need_service("Postgres", str(exc))
    admin.autocommit = True
    name = f"facelake_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = postgres_url().rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def redis_url() -> str:
    """The Redis server the tests use, without a database number."""
    return os.environ.get("FACELAKE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


REDIS_TEST_DBS = range(8, 16)
"""Database numbers tests may claim; 0 (docker-compose's, a developer's) and the other low ones stay alone."""
REDIS_CLAIM_KEY = "facelake-test-claim"


@pytest.fixture
def redis_database() -> Iterator[str]:
    """A Redis database claimed for this test alone, emptied; yields its URL and empties it afterwards.

    The claim is a key set with NX in the database itself, so two test sessions on one server never share a
    database (a celery queue named ``cpu`` in a shared one would feed the other session's workers).
    """
    try:
        import redis

        server = redis.Redis.from_url(redis_url(), socket_connect_timeout=5)
        server.ping()
    except Exception as exc:
        need_service("Redis", str(exc))
    server.close()
    token = uuid.uuid4().hex
    for number in REDIS_TEST_DBS:
        url = f"{redis_url()}/{number}"
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        if client.set(REDIS_CLAIM_KEY, token, nx=True, ex=3 * 3600):
            break
        client.close()
    else:
        pytest.fail(
            f"every Redis test database {REDIS_TEST_DBS} on {redis_url()} is claimed ({REDIS_CLAIM_KEY})"
        )
    try:
        for key in client.scan_iter(count=1000):  # what a killed session left
            if key != REDIS_CLAIM_KEY.encode():
                client.delete(key)
        yield url
    finally:
        if client.get(REDIS_CLAIM_KEY) == token.encode():
            client.flushdb()
        client.close()


@pytest.fixture
def laion_world(tmp_path, monkeypatch):
    """The offline LAION-Face world served on 127.0.0.1, with FACELAKE_CONFIG pointing at its config."""
    from synthetic.image_server import ImageServer
    from synthetic.world import build_laion_world

    monkeypatch.delenv("FACELAKE_ROOT", raising=False)
    with ImageServer() as server:
        world = build_laion_world(tmp_path / "world", server)
        monkeypatch.setenv("FACELAKE_CONFIG", str(world.config_path))
        yield world


@pytest.fixture
def s3_laion_world(laion_world, s3_storage):
    """The same world with the lake on the local S3 server."""
    from synthetic.world import WorldSpec, write_config

    s3 = s3_storage.s3
    write_config(
        laion_world,
        WorldSpec(),
        root=s3_storage.root,
        s3={"endpoint_url": s3.endpoint_url, "key": s3.key, "secret": s3.secret},
    )
    return laion_world
