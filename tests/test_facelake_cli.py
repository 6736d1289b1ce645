"""The installed ``facelake`` console script: ``--help`` and ``status`` on a lake committed with the engine's
own protocol, on local disk and on the local S3 server (``facelake models import`` is checked in
tests/test_models_import.py, beside the ``python -m`` run it must equal)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facelake.cli import COMMANDS
from facelake.lake.commit import (
    Attempt,
    FileEntry,
    Manifest,
    PartitionArtifact,
    Written,
    materialize_partition,
)
from facelake.lake.storage import Storage
from tests.conftest import S3_KEY, S3_SECRET

CLI_TIMEOUT_S = 120
UNCOMMITTED = ("laion_face", "images", "00001")
TAMPERED = ("laion_face", "meta", "00000")
DATASETS = ("celebahq", "hyperface", "laion_face")


def facelake_script() -> str:
    """The console script installed beside this interpreter (``pip install -e .`` registers it)."""
    found = shutil.which("facelake", path=os.path.dirname(sys.executable))
    assert found, f"no facelake console script in {os.path.dirname(sys.executable)}: pip install -e ."
    return found


def run_facelake(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [facelake_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any FACELAKE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELAKE_")}
    return {**env, **extra}


def lake_env(storage: Storage) -> dict[str, str]:
    """:func:`clean_env` with ``storage`` as the lake root (and its S3 endpoint and keys on S3)."""
    env = clean_env(FACELAKE_ROOT=storage.root)
    if storage.protocol != "file":
        s3 = storage.s3
        env |= {
            "FACELAKE_S3__ENDPOINT_URL": s3.endpoint_url,
            "FACELAKE_S3__KEY": s3.key,
            "FACELAKE_S3__SECRET": s3.secret,
        }
    return env


# --- a lake like the demo's -----------------------------------------------------------------------------


def write_parquet(attempt: Attempt, name: str, rows: int) -> FileEntry:
    uri = attempt.uri(name)
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "key": [f"{i:09d}" for i in range(rows)]})
    with attempt.artifact.storage.open(uri, "wb") as handle:
        pq.write_table(table, handle)
    return attempt.entry(uri, rows=rows)


def write_blob(attempt: Attempt, name: str, data: bytes) -> FileEntry:
    uri = attempt.uri(name)
    attempt.artifact.storage.write_bytes(uri, data)
    return attempt.entry(uri)


def commit(storage: Storage, where: tuple[str, str, str], write, config: dict) -> Manifest:
    artifact = PartitionArtifact(storage, *where)
    return materialize_partition(artifact, config, "1+cfg.test", "test", write).manifest


def build_lake(storage: Storage) -> None:
    """Committed partitions across three datasets (one without rows, one with two files), one crashed attempt
    (a folder without a manifest), a hidden checkpoint folder and a stray file at the root."""
    commit(
        storage,
        ("laion_face", "face_ids", "all"),
        lambda a: Written([write_parquet(a, "ids.parquet", 40)], 40),
        {},
    )
    for part, rows in (("00000", 30), ("00001", 25)):
        commit(
            storage,
            ("laion_face", "meta", part),
            lambda a, p=part, n=rows: Written([write_parquet(a, f"part_{p}.parquet", n)], n),
            {"part": part},
        )
    commit(
        storage,
        ("laion_face", "images", "00000"),
        lambda a: Written(
            [write_blob(a, "00000.tar", b"x" * 3000), write_parquet(a, "00000.parquet", 12)], 12
        ),
        {"part": "00000"},
    )
    commit(
        storage,
        ("celebahq", "identity_clusters", "demo"),
        lambda a: Written([write_parquet(a, "clusters.parquet", 7)], 7),
        {"eps": 0.5},
    )
    commit(
        storage,
        ("hyperface", "reference_embeddings", "demo"),
        lambda a: Written([write_blob(a, "embeddings.npy", b"\0" * 512)]),
        {"variant": "demo"},
    )

    def crash(attempt: Attempt) -> Written:
        write_blob(attempt, "00001.tar", b"partial")
        raise RuntimeError("killed mid-download")

    with pytest.raises(RuntimeError, match="killed"):
        commit(storage, UNCOMMITTED, crash, {"part": "00001"})
    storage.write_json(storage.uri("hyperface", "_checkpoints", "demo", "state.json"), {"step": 3})
    storage.write_bytes(storage.uri("README.txt"), b"not a dataset")
    # Manifests alone: a committed data file replaced afterwards must not change what status reports.
    [tampered] = PartitionArtifact(storage, *TAMPERED).file_uris()
    storage.write_bytes(tampered, b"garbage of another size")


def expected_partitions(storage: Storage) -> dict[tuple[str, str, str], Manifest | None]:
    """Every partition folder of the lake and its manifest, read with the engine's reader."""
    keys = [
        ("celebahq", "identity_clusters", "demo"),
        ("hyperface", "reference_embeddings", "demo"),
        ("laion_face", "face_ids", "all"),
        ("laion_face", "images", "00000"),
        UNCOMMITTED,
        ("laion_face", "meta", "00000"),
        ("laion_face", "meta", "00001"),
    ]
    return {key: PartitionArtifact(storage, *key).manifest() for key in keys}


@dataclass
class Lake:
    storage: Storage
    expected: dict[tuple[str, str, str], Manifest | None]
    args: list[str]
    env: dict[str, str]
    cwd: Path


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """The lake on local disk (root from FACELAKE_ROOT) or on the S3 server (``--root``, endpoint and
    credentials from FACELAKE_S3__*)."""
    if request.param == "local":
        storage = Storage(str(tmp_path / "lake"))
        args, env = [], clean_env(FACELAKE_ROOT=storage.root)
    else:
        storage = request.getfixturevalue("s3_storage")
        args = ["--root", storage.root]
        env = clean_env(
            FACELAKE_S3__ENDPOINT_URL=storage.s3.endpoint_url,
            FACELAKE_S3__KEY=S3_KEY,
            FACELAKE_S3__SECRET=S3_SECRET,
        )
    build_lake(storage)
    expected = expected_partitions(storage)
    assert sum(m is None for m in expected.values()) == 1
    return Lake(storage, expected, args, env, tmp_path)


# --- reading the table ----------------------------------------------------------------------------------


def table_rows(stdout: str) -> tuple[list[list[str]], list[str]]:
    """The partition rows and the total row of a status table, split into cells."""
    lines = stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    assert len(rules) == 2, stdout
    header = re.split(r"\s{2,}", lines[rules[0] - 1].strip())
    assert header == [
        "ASSET",
        "PARTITION",
        "STATE",
        "ROWS",
        "FILES",
        "BYTES",
        "CONFIG",
        "CODE",
        "CREATED (UTC)",
    ]
    body = [re.split(r"\s{2,}", line.strip()) for line in lines[rules[0] + 1 : rules[1]]]
    return body, re.split(r"\s{2,}", lines[rules[1] + 1].strip())


def number(cell: str) -> int | None:
    return None if cell == "-" else int(cell.replace(",", ""))


def manifest_bytes(manifest: Manifest) -> int:
    return sum(f.size for f in manifest.files)


# --- tests ----------------------------------------------------------------------------------------------


def test_help_lists_every_command(tmp_path: Path) -> None:
    done = run_facelake("--help", cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert re.search(rf"^\s+{command.name}\s+\S", done.stdout, re.MULTILINE), command.name


def test_status_table_shows_every_partition_as_its_manifest_says(lake: Lake) -> None:
    done = run_facelake("status", *lake.args, cwd=lake.cwd, env=lake.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"lake {lake.storage.root}\n")
    body, total = table_rows(done.stdout)
    assert all(len(row) == 9 for row in body), body
    got = {(*row[0].split("/"), row[1]): row for row in body}
    assert list(got) == list(lake.expected)  # sorted; hidden folders and root files are not partitions
    for key, manifest in lake.expected.items():
        state, rows, files, size, config, code, created = got[key][2:]
        if manifest is None:
            assert (state, rows, files, size, config, code, created) == ("uncommitted", *["-"] * 6)
            continue
        assert state == "committed"
        assert number(rows) == manifest.rows
        assert number(files) == len(manifest.files)
        assert number(size) == manifest_bytes(manifest)
        assert config == manifest.config_hash[:8]
        assert code == manifest.code_version
        assert created == manifest.created_at[:19].replace("T", " ")
    committed = [m for m in lake.expected.values() if m is not None]
    assert total == [
        f"total: {len({k[:2] for k in lake.expected})} assets",
        f"{len(lake.expected)} parts",
        f"{len(committed)} committed",
        f"{sum(m.rows or 0 for m in committed):,}",
        f"{sum(len(m.files) for m in committed):,}",
        f"{sum(manifest_bytes(m) for m in committed):,}",
        "(+ 1 uncommitted)",
    ]


def test_status_json_equals_the_manifests(lake: Lake) -> None:
    done = run_facelake("status", *lake.args, "--format", "json", cwd=lake.cwd, env=lake.env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["root"] == lake.storage.root
    got = {(p["dataset"], p["artifact"], p["partition"]): p for p in document["partitions"]}
    assert list(got) == list(lake.expected)
    for key, manifest in lake.expected.items():
        row = got[key]
        assert row["uri"] == PartitionArtifact(lake.storage, *key).prefix
        if manifest is None:
            assert row["committed"] is False and row["state"] == "uncommitted"
            assert row["rows"] is row["bytes"] is row["files"] is row["config_hash"] is None
            continue
        assert row["committed"] is True and row["state"] == "committed"
        assert row["rows"] == manifest.rows
        assert row["files"] == len(manifest.files)
        assert row["bytes"] == manifest_bytes(manifest)
        assert row["config_hash"] == manifest.config_hash
        assert row["content_hash"] == manifest.content_hash
        assert row["code_version"] == manifest.code_version
        assert row["created_at"] == manifest.created_at
    committed = [m for m in lake.expected.values() if m is not None]
    assert document["totals"] == {
        "partitions": len(lake.expected),
        "committed": len(committed),
        "uncommitted": 1,
        "unreadable": 0,
        "assets": len({k[:2] for k in lake.expected}),
        "rows": sum(m.rows or 0 for m in committed),
        "files": sum(len(m.files) for m in committed),
        "bytes": sum(manifest_bytes(m) for m in committed),
    }


def test_status_of_one_dataset(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "lake"))
    build_lake(storage)
    env = clean_env()
    done = run_facelake("status", "--root", storage.root, "--dataset", "celebahq", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    body, _ = table_rows(done.stdout)
    assert [row[:3] for row in body] == [["celebahq/identity_clusters", "demo", "committed"]]
    unknown = run_facelake("status", "--root", storage.root, "--dataset", "sfhq", cwd=tmp_path, env=env)
    assert unknown.returncode == 0
    assert "no dataset folder 'sfhq'" in unknown.stderr and "(no partition folders)" in unknown.stdout


def test_an_unreadable_manifest_is_shown_not_fatal(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "lake"))
    build_lake(storage)
    broken = PartitionArtifact(storage, "laion_face", "meta", "00001")
    storage.write_bytes(broken.manifest_uri, b"{not json")
    done = run_facelake(
        "status", "--root", storage.root, "--dataset", "laion_face", cwd=tmp_path, env=clean_env()
    )
    assert done.returncode == 0, done.stderr
    body, total = table_rows(done.stdout)
    assert ["laion_face/meta", "00001", "unreadable", *["-"] * 6] in body
    assert total[-1] == "(+ 1 uncommitted, 1 unreadable)"
    assert f"unreadable manifest: {broken.prefix}: JSONDecodeError" in done.stdout


def test_status_of_a_missing_root_exits_2(tmp_path: Path, s3_storage: Storage) -> None:
    local = run_facelake("status", "--root", str(tmp_path / "nowhere"), cwd=tmp_path, env=clean_env())
    assert local.returncode == 2 and local.stdout == ""
    assert f"the lake root {tmp_path / 'nowhere'} does not exist" in local.stderr
    s3_env = lake_env(s3_storage)
    remote = run_facelake("status", "--root", s3_storage.root, cwd=tmp_path, env=s3_env)  # empty bucket
    assert remote.returncode == 2 and f"the lake root {s3_storage.root} does not exist" in remote.stderr
