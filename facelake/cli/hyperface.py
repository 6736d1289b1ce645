"""``facelake hyperface``: a HyperFace variant's committed training set, out of the lake.

    facelake hyperface export --variant 10k --to /data/hyperface-10k
    facelake hyperface export --variant 10k --to s3://bucket/datasets/hyperface-10k --layout webdataset

``export`` copies the committed ``hyperface_dataset[variant]`` (the lake: the settings' ``root`` or ``--root``)
to a folder or an ``s3://`` prefix (S3 endpoint and credentials from the settings): ``identities/<identity_id>/
<index>.jpg`` (torchvision's ``ImageFolder``), ``webdataset/`` shards with integer labels, and always
``dataset.parquet``, ``labels.parquet`` and ``dataset.json``. Exit status 0 when images were exported, 3 when
the dataset is committed but empty (nothing to train on: the counts say why), 1 for an error a user can act
on (nothing committed, invalid settings, unreachable S3), 2 for a usage error or a missing lake root.
"""

from __future__ import annotations

import argparse
import sys

EMPTY_DATASET = 3
LAYOUTS = ("folders", "webdataset")


def configure(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``facelake hyperface``."""
    commands = parser.add_subparsers(dest="hyperface_command", required=True, metavar="SUBCOMMAND")
    export = commands.add_parser(
        "export",
        help="copy a variant's committed training set to a folder or s3:// prefix",
        description="Copy hyperface_dataset[variant] out of the lake, in one or both layouts.",
    )
    export.add_argument("--variant", required=True, help="the HyperFace variant (a hyperface.variants key)")
    export.add_argument("--to", required=True, metavar="DIR|s3://BUCKET/PREFIX", help="where to write it")
    export.add_argument(
        "--layout",
        choices=(*LAYOUTS, "both"),
        default="both",
        help="folders per identity, webdataset shards, or both (default)",
    )
    export.add_argument("--root", help="the lake holding the dataset (default: the settings')")


def run(args: argparse.Namespace) -> int:
    """Export; the exit status of the module doc."""
    from facelake.cli.lake import command_storage
    from facelake.curation.artifacts import dataset_artifact
    from facelake.curation.dataset import export_dataset
    from facelake.lake.errors import InputError

    lake = command_storage("hyperface export", args.root)
    if isinstance(lake, int):
        return lake
    artifact = dataset_artifact(lake, args.variant)
    if artifact.manifest() is None:
        raise InputError(
            artifact.prefix,
            f"no committed hyperface_dataset[{args.variant}]: materialize it first "
            f"(dagster asset materialize --select hyperface_dataset --partition {args.variant})",
        )
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    result = export_dataset(
        artifact,
        args.to,
        layouts=layouts,
        s3=lake.s3,
        log=lambda line: print(line, file=sys.stderr),
    )
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if isinstance(v, int))
    print(
        f"{result.to}: {result.files} files, {result.bytes:,} bytes ({', '.join(result.layouts)}); {counts}"
    )
    if result.empty:
        print(
            f"facelake hyperface export: hyperface_dataset[{args.variant}] is empty: nothing to train on",
            file=sys.stderr,
        )
        return EMPTY_DATASET
    return 0
