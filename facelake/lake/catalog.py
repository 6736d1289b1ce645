"""DuckDB views over the COMMITTED parquet artifacts (DESIGN §2, §3): the machinery every domain's catalog
section uses.

Only committed partitions are visible. Partitions are found by listing ``{root}/<dataset>/<artifact>/``; a
partition counts only if it holds a ``_manifest.json``, and the files a view reads come from that manifest,
never from a glob, so files of a crashed attempt or an uncommitted shard are never read. On a remote root the
storage's own fsspec filesystem is registered with DuckDB (DuckDB cannot fetch its httpfs extension offline)
and files are read by their full URIs (``s3://bucket/key``). A catalog is a snapshot of what was committed
when it was opened: :func:`refresh` (or a new catalog) shows later commits.

A domain declares a :class:`CatalogSection`: its dataset folder, its view SQL file (in ``sql/``) and the
:class:`ViewSource` placeholders that file selects from. Each section adds the tables
``<dataset>_partitions`` (one row per committed manifest) and ``<dataset>_files`` (the files they list).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from facelake.lake.commit import Manifest, PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.storage import Storage

SQL_DIR_ENV = "FACELAKE_SQL_DIR"
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")

PARTITIONS_SCHEMA = pa.schema(
    [
        ("artifact", pa.string()),
        ("part", pa.string()),
        ("rows", pa.int64()),
        ("files", pa.int64()),
        ("bytes", pa.int64()),
        ("content_hash", pa.string()),
        ("config_hash", pa.string()),
        ("code_version", pa.string()),
        ("created_at", pa.string()),
        ("uri", pa.string()),
    ]
)
FILES_SCHEMA = pa.schema(
    [
        ("artifact", pa.string()),
        ("part", pa.string()),
        ("path", pa.string()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("rows", pa.int64()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True)
class ViewSource:
    """The committed files behind one view: an artifact's manifest entries whose path matches ``files``."""

    placeholder: str
    artifact: str
    files: re.Pattern[str]
    empty_schema: pa.Schema


def named_file(name: str) -> re.Pattern[str]:
    """The committed file called ``name``, at the top of its partition or in the attempt folder its manifest
    lists it under (the ``files`` of a :class:`ViewSource`)."""
    return re.compile(r"(.*/)?" + re.escape(name))


@dataclass(frozen=True)
class CatalogSection:
    """One domain's part of the catalog: ``{root}/{dataset}/`` artifacts, the view SQL that defines its views
    over ``sources``, and the partition keys its views read (None: every committed partition)."""

    dataset: str
    views_sql: str
    sources: tuple[ViewSource, ...]
    partitions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CommittedPartition:
    """One partition of an artifact that has a manifest."""

    artifact: PartitionArtifact
    manifest: Manifest

    def files(self, pattern: re.Pattern[str] | None = None) -> list[str]:
        """URIs of the manifest's files whose relative path fully matches ``pattern`` (all without one)."""
        paths = [f.path for f in self.manifest.files]
        return [self.artifact.uri(p) for p in paths if pattern is None or pattern.fullmatch(p)]


# --- finding committed partitions ------------------------------------------------------------------------


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _visible(name: str) -> bool:
    return bool(name) and not name.startswith(("_", "."))


def _read_manifest(artifact: PartitionArtifact) -> Manifest | None:
    try:
        return artifact.manifest()
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(artifact.manifest_uri, f"unreadable partition manifest: {exc}") from exc


def subfolders(storage: Storage, uri: str) -> list[str]:
    """Full URIs of the visible sub-folders of ``uri`` (files and ``_``/``.`` names skipped), sorted; empty if
    it does not exist."""
    fs = storage.filesystem_for(uri)
    try:
        entries = fs.ls(uri, detail=True, **({} if storage.protocol == "file" else {"refresh": True}))
    except FileNotFoundError:
        return []
    names = {_name(e["name"]) for e in entries if e.get("type") == "directory"}
    return [f"{uri.rstrip('/')}/{n}" for n in sorted(names) if _visible(n)]


def dataset_folders(storage: Storage) -> list[str]:
    """Names of the dataset folders directly under the root."""
    return [_name(uri) for uri in subfolders(storage, storage.root)]


def partition_folders(storage: Storage, dataset: str) -> list[PartitionArtifact]:
    """Every ``{root}/{dataset}/<artifact>/<partition>/`` folder, committed or not, sorted."""
    return [
        PartitionArtifact(storage, dataset, _name(artifact_uri), _name(partition_uri))
        for artifact_uri in subfolders(storage, storage.uri(dataset))
        for partition_uri in subfolders(storage, artifact_uri)
    ]


def committed_partitions(storage: Storage, dataset: str) -> list[CommittedPartition]:
    """Every partition under ``{root}/{dataset}/<artifact>/<partition>/`` that has a manifest, sorted."""
    found = []
    for artifact in partition_folders(storage, dataset):
        manifest = _read_manifest(artifact)
        if manifest is not None:
            found.append(CommittedPartition(artifact, manifest))
    return found


def source_files(
    partitions: list[CommittedPartition], source: ViewSource, keys: tuple[str, ...] | None = None
) -> list[str]:
    """The committed files a view reads: its artifact's partitions (those in ``keys``, when given) and the
    manifest paths that match."""
    return [
        uri
        for c in partitions
        if c.artifact.artifact == source.artifact and (keys is None or c.artifact.partition in keys)
        for uri in c.files(source.files)
    ]


def partitions_table(partitions: list[CommittedPartition]) -> pa.Table:
    """One row per committed manifest (:data:`PARTITIONS_SCHEMA`)."""
    rows = [
        {
            "artifact": c.artifact.artifact,
            "part": c.artifact.partition,
            "rows": c.manifest.rows,
            "files": len(c.manifest.files),
            "bytes": sum(f.size for f in c.manifest.files),
            "content_hash": c.manifest.content_hash,
            "config_hash": c.manifest.config_hash,
            "code_version": c.manifest.code_version,
            "created_at": c.manifest.created_at,
            "uri": c.artifact.prefix,
        }
        for c in partitions
    ]
    return pa.Table.from_pylist(rows, schema=PARTITIONS_SCHEMA)


def files_table(partitions: list[CommittedPartition]) -> pa.Table:
    """One row per file the committed manifests list (:data:`FILES_SCHEMA`)."""
    rows = [
        {
            "artifact": c.artifact.artifact,
            "part": c.artifact.partition,
            "path": f.path,
            "uri": c.artifact.uri(f.path),
            "size": f.size,
            "rows": f.rows,
            "sha256": f.sha256,
        }
        for c in partitions
        for f in c.manifest.files
    ]
    return pa.Table.from_pylist(rows, schema=FILES_SCHEMA)


# --- SQL text ---------------------------------------------------------------------------------------------


def sql_dirs() -> list[Path]:
    """Where SQL files are looked for: ``$FACELAKE_SQL_DIR``, the repository's ``sql/``, ``./sql``."""
    env = os.environ.get(SQL_DIR_ENV)
    repo = Path(__file__).resolve().parents[2] / "sql"
    return [Path(p) for p in (env, repo, Path.cwd() / "sql") if p]


def sql_path(name: str) -> Path:
    """The SQL file ``name``; raises InputError naming every place it was looked for."""
    dirs = sql_dirs()
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(str(d / name) for d in dirs)
    raise InputError(name, f"SQL file not found (looked at {looked}; set {SQL_DIR_ENV} to the sql/ folder)")


def render_sql(name: str, values: dict[str, str]) -> str:
    """The SQL file with each ``{placeholder}`` replaced; an unknown placeholder is an error."""
    path = sql_path(name)

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise InputError(str(path), f"unknown placeholder {match.group(0)} (known: {sorted(values)})")
        return values[match.group(1)]

    return PLACEHOLDER.sub(fill, path.read_text())


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_string_list(values: list[str]) -> str:
    """A DuckDB list literal of quoted strings: ``['a', 'it''s']``."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def empty_relation_sql(conn: duckdb.DuckDBPyConnection, schema: pa.Schema) -> str:
    """A subquery with no rows and the columns of ``schema`` plus ``filename`` (as read_parquet gives)."""
    types = conn.from_arrow(schema.empty_table()).types
    columns = [
        f"CAST(NULL AS {t}) AS {quote_identifier(n)}" for n, t in zip(schema.names, types, strict=True)
    ]
    return f"(SELECT {', '.join([*columns, 'CAST(NULL AS VARCHAR) AS filename'])} WHERE false)"


def source_sql(conn: duckdb.DuckDBPyConnection, source: ViewSource, uris: list[str]) -> str:
    """What a view selects from: its committed files, or an empty relation with its columns."""
    if not uris:
        return empty_relation_sql(conn, source.empty_schema)
    return f"read_parquet({sql_string_list(uris)}, filename = true, union_by_name = true)"


# --- the catalog ------------------------------------------------------------------------------------------


def register_storage(conn: duckdb.DuckDBPyConnection, storage: Storage) -> None:
    """Let DuckDB read the storage's URIs: register its fsspec filesystem when the root is remote."""
    if storage.protocol == "file":
        return
    protocols = storage.fs.protocol
    for name in [protocols] if isinstance(protocols, str) else protocols:
        if name in conn.list_filesystems():
            conn.unregister_filesystem(name)
    conn.register_filesystem(storage.fs)


def replace_table(conn: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    staging = f"_facelake_staging_{name}"
    conn.register(staging, table)
    try:
        conn.execute(f"CREATE OR REPLACE TABLE {quote_identifier(name)} AS SELECT * FROM {staging}")
    finally:
        conn.unregister(staging)


def refresh_section(
    conn: duckdb.DuckDBPyConnection,
    storage: Storage,
    section: CatalogSection,
    partitions: list[CommittedPartition] | None = None,
) -> list[CommittedPartition]:
    """(Re)create one section's manifest tables and views from what is committed now; returns its partitions.

    ``partitions``: the dataset's committed partitions, when already listed (several sections may share a
    dataset folder, e.g. a domain's views over another's artifacts). Besides its sources' placeholders, the
    view SQL may use ``{dataset}`` (the section's dataset folder), so one SQL file can serve several datasets.
    """
    if partitions is None:
        partitions = committed_partitions(storage, section.dataset)
    replace_table(conn, f"{section.dataset}_partitions", partitions_table(partitions))
    replace_table(conn, f"{section.dataset}_files", files_table(partitions))
    sources = {
        s.placeholder: source_sql(conn, s, source_files(partitions, s, section.partitions))
        for s in section.sources
    }
    conn.execute(render_sql(section.views_sql, {"dataset": section.dataset, **sources}))
    return partitions


def refresh(
    conn: duckdb.DuckDBPyConnection, storage: Storage, sections: tuple[CatalogSection, ...]
) -> list[CommittedPartition]:
    """(Re)create every section's tables and views, listing each dataset folder once; returns all committed
    partitions they found."""
    listed: dict[str, list[CommittedPartition]] = {}
    for section in sections:
        if section.dataset not in listed:
            listed[section.dataset] = committed_partitions(storage, section.dataset)
        refresh_section(conn, storage, section, listed[section.dataset])
    return [p for partitions in listed.values() for p in partitions]


def open_catalog(
    storage: Storage, sections: tuple[CatalogSection, ...], database: str = ":memory:"
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the sections' views over the storage's committed artifacts.

    ``database`` is ``:memory:`` or a DuckDB file (which then keeps the view definitions; remote files
    still need this function to register the filesystem). Close the connection when done (it is a
    context manager).
    """
    conn = duckdb.connect(database)
    try:
        register_storage(conn, storage)
        refresh(conn, storage, sections)
    except BaseException:
        conn.close()
        raise
    return conn


def query(conn: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> pa.Table:
    """Run one SQL statement and return its rows as an Arrow table (empty for a statement without rows)."""
    relation = conn.sql(sql, params=params)
    return relation.to_arrow_table() if relation is not None else pa.table({})


DESCRIBE_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("kind", pa.string()),
        ("rows", pa.int64()),
        ("columns", pa.string()),
        ("comment", pa.string()),
    ]
)


def describe(conn: duckdb.DuckDBPyConnection) -> pa.Table:
    """The catalog's views and tables (:data:`DESCRIBE_SCHEMA`): name, kind, rows, columns (comma-separated)
    and the comment the view SQL gave it (``COMMENT ON VIEW``; NULL without one)."""
    objects = conn.sql(
        "SELECT view_name AS name, 'view' AS kind, comment FROM duckdb_views() WHERE NOT internal "
        "UNION ALL SELECT table_name, 'table', comment FROM duckdb_tables() WHERE NOT internal ORDER BY name"
    ).fetchall()
    rows = []
    for name, kind, comment in objects:
        relation = conn.sql(f"SELECT * FROM {quote_identifier(name)}")
        [(count,)] = conn.sql(f"SELECT count(*) FROM {quote_identifier(name)}").fetchall()
        rows.append(
            {
                "name": name,
                "kind": kind,
                "rows": count,
                "columns": ", ".join(relation.columns),
                "comment": comment,
            }
        )
    return pa.Table.from_pylist(rows, schema=DESCRIBE_SCHEMA)
