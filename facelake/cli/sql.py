"""``facelake sql``: one SQL statement over the catalog (DuckDB views of every committed table).

    facelake sql "SELECT part, count(*) AS faces FROM laion_face_detected GROUP BY part"
    facelake sql "SELECT * FROM celebahq_identity_clusters" --format parquet --output clusters.parquet
    facelake sql "SELECT * FROM hyperface_reference_embeddings" --format json --output refs.json
    facelake sql --views

The catalog (:mod:`facelake.catalog`) is opened over the settings' root (``FACELAKE_ROOT``, ``facelake.yaml``,
``$FACELAKE_CONFIG``) unless ``--root`` names one, local or ``s3://`` (endpoint and credentials from the
settings); its views read the committed partitions only. The result is printed as a table (at most
``--max-rows`` rows, cells cut to ``--width``; floats shown to 4 decimals) or, with ``--format``, written in
full as parquet, CSV or JSON (a list of records) to ``--output`` (a local path or a URI on the root's
storage; CSV and JSON go to stdout without one; nested values such as embeddings become JSON text in CSV).
``--views`` lists every view and table with its row count and what it holds.
Exit status 0; 1 for SQL DuckDB refuses (the message names the problem) or another error a user can act on;
2 for a usage error or a root that does not exist.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from facelake.lake.storage import Storage

USAGE_ERROR = 2
FORMATS = ("table", "parquet", "csv", "json")
VIEW_COLUMNS = ("name", "kind", "rows", "comment")
"""What ``--views`` prints as a table (the other formats write every column of :func:`describe`)."""
COMMENT_WIDTH = 150


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``facelake sql``."""
    parser.add_argument(
        "statement", nargs="?", help='one SQL statement, e.g. "SELECT * FROM laion_face_meta"'
    )
    parser.add_argument(
        "--views", action="store_true", help="list the catalog's views and tables with their row counts"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output (default: table)")
    parser.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        help="write the result here (a local path or a URI on the root's storage); needed for parquet",
    )
    parser.add_argument(
        "--max-rows", type=int, default=100, metavar="N", help="rows a table shows (default: 100; 0: all)"
    )
    parser.add_argument("--width", type=int, default=40, metavar="N", help="widest table cell (default: 40)")
    parser.add_argument("--root", help="storage root, a local path or s3://bucket/prefix (default: settings)")


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    if bool(args.statement) == bool(args.views):
        return "give one SQL statement or --views"
    if args.format == "parquet" and not args.output:
        return "--format parquet needs --output PATH"
    if args.output and args.format == "table":
        return "--output needs --format parquet, csv or json"
    if args.max_rows < 0 or args.width < 4:
        return "--max-rows must be >= 0 and --width >= 4"
    return None


def execute(conn: Any, statement: str) -> pa.Table:
    """The statement's rows; DuckDB's refusal becomes an :class:`SqlError` naming the problem."""
    import duckdb

    from facelake.catalog import query

    try:
        return query(conn, statement)
    except duckdb.Error as exc:
        hint = " (facelake sql --views lists the views)" if isinstance(exc, duckdb.CatalogException) else ""
        raise SqlError(f"{' '.join(str(exc).split())}{hint}") from exc


def _plain(value: Any) -> Any:
    """A JSON-safe value: NaN and infinities as null, decimals as floats, bytes as text, nested values
    converted."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def json_records(table: pa.Table) -> str:
    """The rows as a JSON list of records (column name -> value), one record per line."""
    records = [json.dumps(_plain(row), default=str) for row in table.to_pylist()]
    return "[\n" + ",\n".join(records) + "\n]\n" if records else "[]\n"


def csv_ready(table: pa.Table) -> pa.Table:
    """The table with every nested or binary column as JSON text (CSV holds scalars only)."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        kind = field.type
        if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            values = [None if v is None else json.dumps(_plain(v), default=str) for v in table[i].to_pylist()]
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
    return table


def encode(table: pa.Table, form: str) -> bytes:
    """The whole table as parquet, CSV or JSON bytes."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if form == "json":
        return json_records(table).encode()
    buffer = io.BytesIO()
    if form == "csv":
        pacsv.write_csv(csv_ready(table), buffer)
    else:
        pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def render(table: pa.Table, max_rows: int, width: int, widths: dict[str, int] | None = None) -> str:
    """The first ``max_rows`` rows as a text table (numbers right-aligned), then how many there are."""
    import pyarrow as pa

    from facelake.cli.tables import text_table

    if table.num_columns == 0:
        return "(the statement returned no result)\n"
    shown = table if max_rows == 0 else table.slice(0, max_rows)
    numeric = {f.name for f in table.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)}
    rows = [list(row.values()) for row in shown.to_pylist()]
    lines = text_table(
        table.column_names, rows, widths=widths, width=width, right=numeric, upper=False, rule=True
    )
    more = table.num_rows - shown.num_rows
    noun = "row" if table.num_rows == 1 else "rows"
    tail = f" ({more:,} not shown: --max-rows 0, or --format ... --output PATH)" if more else ""
    return "\n".join([*lines, f"({table.num_rows:,} {noun}){tail}"]) + "\n"


def write(storage: Storage, table: pa.Table, form: str, output: str | None) -> None:
    """Write the result to ``output`` on the storage's filesystems, or to stdout (CSV, JSON) without one."""
    data = encode(table, form)
    if output is None:
        sys.stdout.write(data.decode())
        return
    with storage.open(output, "wb") as handle:
        handle.write(data)
    print(f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {output} ({form})")


class SqlError(Exception):
    """DuckDB refused the statement."""


def run(args: argparse.Namespace) -> int:
    """Run the statement (or list the views) and print or write the result."""
    from facelake.catalog import describe, open_catalog
    from facelake.cli.lake import command_storage

    problem = usage_problem(args)
    if problem:
        print(f"facelake sql: error: {problem}", file=sys.stderr)
        return USAGE_ERROR
    storage = command_storage("sql", args.root)
    if isinstance(storage, int):
        return storage
    with open_catalog(storage) as conn:
        try:
            table = describe(conn) if args.views else execute(conn, args.statement)
        except SqlError as exc:
            print(f"facelake sql: SQL error: {exc}", file=sys.stderr)
            return 1
    if args.format != "table":
        write(storage, table, args.format, args.output)
    elif args.views:
        sys.stdout.write(render(table.select(list(VIEW_COLUMNS)), 0, args.width, {"comment": COMMENT_WIDTH}))
    else:
        sys.stdout.write(render(table, args.max_rows, args.width))
    return 0
