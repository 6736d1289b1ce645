"""Entry point of ``python -m facelake.models``: the same parser and code as ``facelake models`` (see
:mod:`facelake.models.cli`)."""

from facelake.models.cli import main

raise SystemExit(main())
