"""``facelake sql`` (the installed console script) over a real committed lake, on local disk and on the local S3
server: LAION-Face part 00000 materialized by its Dagster jobs, plus face, cluster, CelebA-HQ and HyperFace
tables committed by the engine's own writers. Every result is compared with the same query run through
:func:`facelake.catalog.open_catalog`."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from facelake.catalog import EMPTY_WITHOUT_GENERATOR, describe, open_catalog, query
from facelake.lake.storage import Storage
from tests.test_catalog import commit_face_tables, materialized_part
from tests.test_facelake_cli import clean_env, lake_env, run_facelake

STATUS_SQL = "SELECT status, count(*) AS n FROM laion_face_samples GROUP BY status ORDER BY status"
CLUSTERS_SQL = (
    "SELECT c.sample_id, c.cluster_id, c.nn_cosine, e.embedding, e.embedder_name FROM "
    "laion_face_identity_clusters c JOIN laion_face_embeddings e USING (part, sample_id, face_index) "
    "ORDER BY c.sample_id"
)


@dataclass
class SqlLake:
    storage: Storage
    args: list[str]
    env: dict[str, str]
    cwd: Path

    def sql(self, *args: str):
        return run_facelake("sql", *self.args, *args, cwd=self.cwd, env=self.env)

    def expected(self, statement: str):
        with open_catalog(self.storage) as conn:
            return query(conn, statement)


@pytest.fixture(scope="module", params=["local", "s3"])
def lake(request, tmp_path_factory) -> SqlLake:
    """Part 00000 materialized and the face tables committed, once per storage for the module."""
    storage = materialized_part(request, tmp_path_factory).storage
    commit_face_tables(storage)
    args = [] if request.param == "local" else ["--root", storage.root]  # on S3 the root is given by --root
    return SqlLake(storage, args, lake_env(storage), tmp_path_factory.mktemp("sql_cwd"))


def table_body(stdout: str) -> tuple[list[str], list[list[str]], str]:
    """Header cells, row cells and the closing count line of a printed table."""
    lines = stdout.rstrip("\n").splitlines()
    assert set(lines[1]) <= {"-", " "}, stdout
    split = [re.split(r"\s{2,}", line.strip()) for line in lines[2:-1]]
    return re.split(r"\s{2,}", lines[0].strip()), split, lines[-1]


def test_a_query_prints_the_catalogs_rows_as_a_table(lake):
    done = lake.sql(STATUS_SQL)
    assert done.returncode == 0, done.stderr
    header, rows, count = table_body(done.stdout)
    expected = lake.expected(STATUS_SQL).to_pylist()
    assert header == ["status", "n"]
    assert [[r["status"], str(r["n"])] for r in expected] == rows
    assert count == f"({len(expected)} rows)" and len(expected) == 4

    limited = lake.sql("SELECT * FROM laion_face_embeddings", "--max-rows", "3", "--width", "20")
    assert limited.returncode == 0, limited.stderr
    header, rows, count = table_body(limited.stdout)
    assert header[:4] == ["sample_id", "key", "face_index", "embedding"] and len(rows) == 3
    assert all(len(row[3]) <= 20 and row[3].endswith("...") for row in rows)  # the vector, cut
    assert re.fullmatch(r"\(48 rows\) \(45 not shown: .*\)", count), count


def test_parquet_csv_and_json_hold_the_whole_result(lake, tmp_path):
    expected = lake.expected(CLUSTERS_SQL)
    assert expected.num_rows == 48
    outputs = {form: str(tmp_path / f"clusters.{form}") for form in ("parquet", "csv", "json")}
    if lake.storage.protocol != "file":  # a URI on the root's storage
        outputs["parquet"] = lake.storage.uri("exports", "clusters.parquet")
    for form, output in outputs.items():
        done = lake.sql(CLUSTERS_SQL, "--format", form, "--output", output)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"wrote 48 rows x 5 columns to {output} ({form})\n"
    with lake.storage.open(outputs["parquet"]) as handle:
        assert pq.read_table(handle).equals(expected)
    records = json.loads(Path(outputs["json"]).read_text())
    rows = expected.to_pylist()
    assert [r["sample_id"] for r in records] == [r["sample_id"] for r in rows]
    assert [r["cluster_id"] for r in records] == [r["cluster_id"] for r in rows]
    assert [r["embedding"] for r in records] == [r["embedding"] for r in rows]  # exact: floats round-trip
    parsed = list(csv.DictReader(io.StringIO(Path(outputs["csv"]).read_text())))
    assert [int(r["cluster_id"]) for r in parsed] == [r["cluster_id"] for r in rows]
    assert [json.loads(r["embedding"]) for r in parsed] == [r["embedding"] for r in rows]
    to_stdout = lake.sql(STATUS_SQL, "--format", "json")
    assert json.loads(to_stdout.stdout) == lake.expected(STATUS_SQL).to_pylist()


def test_views_lists_every_view_with_its_rows_and_why_generation_is_empty(lake):
    done = lake.sql("--views")
    assert done.returncode == 0, done.stderr
    header, rows, _ = table_body(done.stdout)
    assert header == ["name", "kind", "rows", "comment"]
    with open_catalog(lake.storage) as conn:
        expected = {r["name"]: r for r in describe(conn).to_pylist()}
    printed = {row[0]: row for row in rows}
    assert set(printed) == set(expected)
    assert {name: int(row[2].replace(",", "")) for name, row in printed.items()} == {
        name: r["rows"] for name, r in expected.items()
    }
    for view in EMPTY_WITHOUT_GENERATOR:
        assert printed[view][2] == "0" and "Empty unless generator weights" in printed[view][3]
    assert int(printed["laion_face_identity_clusters"][2]) == 48 and printed["laion_face_meta"][2] != "0"


def test_bad_sql_and_bad_usage_fail_naming_the_problem(local_storage, tmp_path):
    """What DuckDB refuses does not depend on the storage: one local lake of engine-written tables."""
    commit_face_tables(local_storage)
    lake = SqlLake(local_storage, [], lake_env(local_storage), tmp_path)
    syntax = lake.sql("SELEC part FROM laion_face_meta")
    assert syntax.returncode == 1 and syntax.stdout == ""
    assert 'facelake sql: SQL error: Parser Error: syntax error at or near "SELEC"' in syntax.stderr
    unknown = lake.sql("SELECT * FROM laion_face_nothing")
    assert unknown.returncode == 1 and "laion_face_nothing does not exist" in unknown.stderr
    assert "(facelake sql --views lists the views)" in unknown.stderr
    column = lake.sql("SELECT no_such_column FROM laion_face_meta")
    assert column.returncode == 1 and '"no_such_column" not found' in column.stderr
    for args, problem in (
        ((), "give one SQL statement or --views"),
        (("SELECT 1", "--format", "parquet"), "--format parquet needs --output PATH"),
        (("SELECT 1", "--output", "x.csv"), "--output needs --format parquet, csv or json"),
    ):
        done = lake.sql(*args)
        assert done.returncode == 2 and f"facelake sql: error: {problem}" in done.stderr, done.stderr


def test_a_missing_root_exits_2(tmp_path):
    done = run_facelake("sql", "--root", str(tmp_path / "nowhere"), "SELECT 1", cwd=tmp_path, env=clean_env())
    assert done.returncode == 2 and f"the lake root {tmp_path / 'nowhere'} does not exist" in done.stderr
