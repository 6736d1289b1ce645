"""``facelake sfhq``: SFHQ parts from a terminal.

    facelake sfhq describe --part 1
    facelake sfhq describe --part 3 --sources s3://bucket/sources --max-names 50

``describe`` lists the part's folder (``sfhq.part_uri_template`` under the settings' ``sources`` or
``--sources``; S3 endpoint and credentials from the settings) and prints its files per modality, the names
complete in every modality, and the validation report: every missing, orphan and unexpected file by name.
When the lake (the settings' ``root`` or ``--root``) holds committed SFHQ stages of that part, their row
counts and the files they could not use (unreadable, refused, invalid) are added.
Exit status 0 when the part validates, 3 when it has problems (the report says which), 1 for an error a user
can act on (no images there, unreachable S3, invalid settings), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from facelake.lake.storage import Storage

PROBLEMS_FOUND = 3
STAGE_ROWS = {
    "landmarks": "landmark rows",
    "segmentations": "segmentation rows",
    "clip_features": "feature rows",
    "face_embeddings": "face embeddings",
}
"""Committed SFHQ stages whose row counts ``describe`` adds, and their labels."""


def configure(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``facelake sfhq``."""
    commands = parser.add_subparsers(dest="sfhq_command", required=True, metavar="SUBCOMMAND")
    describe = commands.add_parser(
        "describe",
        help="a part's files per modality, counts and validation report",
        description="A part's files per modality, complete names and every problem by name.",
    )
    describe.add_argument("--part", required=True, help="the SFHQ part: 1, 2, 3 or 4")
    describe.add_argument(
        "--sources", help="root of the released source files, local or s3:// (default: the settings')"
    )
    describe.add_argument(
        "--root", help="the lake whose committed SFHQ stages to add (default: the settings')"
    )
    describe.add_argument(
        "--max-names", type=int, default=10, metavar="N", help="names shown per kind of problem (default: 10)"
    )


def committed_stages(lake: Storage, part: str) -> tuple[list[pa.Table], dict[str, int]]:
    """The problems tables and row counts of the SFHQ stages committed for ``part`` in ``lake``."""
    from facelake.lake.tables import read_parquet
    from facelake.sfhq.artifacts import PROBLEMS_FILE, artifact

    problems, counts = [], {}
    for name, label in STAGE_ROWS.items():
        target = artifact(lake, name, part)
        manifest = target.manifest()
        if manifest is None:
            continue
        counts[label] = int(manifest.rows or 0)
        paths = [f.path for f in manifest.files if f.path.rsplit("/", 1)[-1] == PROBLEMS_FILE]
        if paths:
            problems.append(read_parquet(lake, target.uri(paths[0])))
    return problems, counts


def run(args: argparse.Namespace) -> int:
    """Describe the part; 3 when it has problems."""
    from pydantic import ValidationError

    from facelake.lake.errors import UnknownPartitionError
    from facelake.lake.storage import Storage
    from facelake.settings import load_settings
    from facelake.sfhq.layout import SfhqPart, concat_problems, scan_part
    from facelake.sfhq.report import describe

    if args.max_names < 0:
        print("facelake sfhq: error: --max-names must be at least 0", file=sys.stderr)
        return 2
    overrides = {key: value for key, value in (("sources", args.sources), ("root", args.root)) if value}
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        print(f"facelake sfhq: invalid settings: {exc}", file=sys.stderr)
        return 1
    try:
        folder = settings.sfhq.part_uri(settings.sources, args.part)
    except UnknownPartitionError as exc:
        print(f"facelake sfhq: error: {exc}", file=sys.stderr)
        return 2
    scan = scan_part(SfhqPart(Storage(folder, settings.s3.options()), folder, args.part))
    lake = settings.storage()
    problems, counts = committed_stages(lake, args.part) if lake.exists(lake.root) else ([], {})
    print(describe(scan, problems=problems, counts=counts, max_names=args.max_names))
    return PROBLEMS_FOUND if concat_problems([scan.problems, *problems]).num_rows else 0
