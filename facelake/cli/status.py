"""``facelake status``: every partition of every asset, committed or not, from the manifests alone.

The root is the settings' (``FACELAKE_ROOT``, ``facelake.yaml``, ``$FACELAKE_CONFIG``) unless ``--root``
names one; S3 endpoint and credentials always come from the settings (``FACELAKE_S3__ENDPOINT_URL``...).
Exit status 0; 2 when the root does not exist; 1 for invalid settings or an unreachable S3 endpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facelake.lake.status import PartitionStatus

SHORT_HASH = 8
COLUMNS = ("ASSET", "PARTITION", "STATE", "ROWS", "FILES", "BYTES", "CONFIG", "CODE", "CREATED (UTC)")
NUMERIC = {"ROWS", "FILES", "BYTES"}
EMPTY = "-"


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``facelake status``."""
    parser.add_argument("--root", help="storage root, a local path or s3://bucket/prefix (default: settings)")
    parser.add_argument(
        "--dataset",
        action="append",
        metavar="D",
        help="only this dataset folder (repeatable; default: every dataset under the root)",
    )
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (default: table)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the lake's status; 2 (with a message) when the root does not exist."""
    from facelake.cli.lake import command_storage
    from facelake.lake.catalog import dataset_folders
    from facelake.lake.status import lake_status, totals

    storage = command_storage("status", args.root)
    if isinstance(storage, int):
        return storage
    datasets = list(dict.fromkeys(args.dataset)) if args.dataset else None
    if datasets:
        present = set(dataset_folders(storage))
        for name in datasets:
            if name not in present:
                known = ", ".join(sorted(present)) or "none"
                print(
                    f"facelake status: no dataset folder {name!r} under {storage.root} (there: {known})",
                    file=sys.stderr,
                )
    statuses = lake_status(storage, datasets)
    if args.format == "json":
        document = {
            "root": storage.root,
            "partitions": [s.to_json() for s in statuses],
            "totals": totals(statuses),
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(storage.root, statuses))
    return 0


def _count(value: int | None) -> str:
    return EMPTY if value is None else f"{value:,}"


def _created(value: str | None) -> str:
    if not value:
        return EMPTY
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S")


def table_row(status: PartitionStatus) -> tuple[str, ...]:
    """One partition's cells, in :data:`COLUMNS` order."""
    return (
        status.asset,
        status.partition,
        status.state,
        _count(status.rows),
        _count(status.files),
        _count(status.bytes),
        (status.config_hash or EMPTY)[:SHORT_HASH],
        status.code_version or EMPTY,
        _created(status.created_at),
    )


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines of columns two spaces apart: numbers right-aligned, text left-aligned; a row may stop
    early, and a row's cells past :data:`COLUMNS` are appended as they are."""
    widths = [max((len(row[i]) for row in rows if i < len(row)), default=0) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if name in NUMERIC else cell.ljust(width)
            for name, cell, width in zip(COLUMNS, row, widths, strict=False)
        ]
        lines.append("  ".join([*cells, *row[len(COLUMNS) :]]).rstrip())
    return lines


def render_table(root: str, statuses: list[PartitionStatus]) -> str:
    """The status as a text table: a header, one line per partition folder, a total line (the committed
    partitions' rows, files and bytes, then the folders without a readable manifest)."""
    from facelake.lake.status import totals

    total: dict[str, Any] = totals(statuses)
    others = [f"{total[state]} {state}" for state in ("uncommitted", "unreadable") if total[state]]
    total_row = (
        f"total: {total['assets']} assets",
        f"{total['partitions']} parts",
        f"{total['committed']} committed",
        _count(total["rows"]),
        _count(total["files"]),
        _count(total["bytes"]),
        *([f"(+ {', '.join(others)})"] if others else []),
    )
    lines = aligned([COLUMNS, *(table_row(s) for s in statuses), total_row[:6]])
    lines[-1] = "  ".join([lines[-1], *total_row[6:]])
    rule = "-" * max(len(line) for line in lines)
    body = lines[1:-1] or ["(no partition folders)"]
    out = [f"lake {root}", "", lines[0], rule, *body, rule, lines[-1]]
    out += [f"unreadable manifest: {s.uri}: {s.error}" for s in statuses if s.error]
    return "\n".join(out) + "\n"
