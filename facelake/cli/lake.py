"""What the commands that read a lake share: the settings (the root from ``--root`` when given) and a root
that exists, each failure said in one line on stderr."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facelake.lake.storage import Storage
    from facelake.settings import FacelakeSettings

INVALID_SETTINGS = 1
ROOT_MISSING = 2


def command_settings(command: str, root: str | None) -> FacelakeSettings | None:
    """The settings, with ``root`` as the storage root when given; None (after saying why) when invalid."""
    from pydantic import ValidationError

    from facelake.settings import load_settings

    try:
        return load_settings(**({"root": root} if root else {}))
    except ValidationError as exc:
        print(f"facelake {command}: invalid settings: {exc}", file=sys.stderr)
        return None


def root_is_there(command: str, storage: Storage) -> bool:
    """Whether the storage's root exists; says so on stderr when it does not."""
    from facelake.lake.status import root_exists

    if root_exists(storage):
        return True
    print(
        f"facelake {command}: the lake root {storage.root} does not exist "
        "(set --root, FACELAKE_ROOT or root: in the config file)",
        file=sys.stderr,
    )
    return False


def command_storage(command: str, root: str | None) -> Storage | int:
    """The storage of the settings' root (``root`` when given), or, after saying why not, the exit status:
    :data:`INVALID_SETTINGS` or :data:`ROOT_MISSING`."""
    settings = command_settings(command, root)
    if settings is None:
        return INVALID_SETTINGS
    storage = settings.storage()
    return storage if root_is_there(command, storage) else ROOT_MISSING
