"""Subprocess entry point that runs ``img2dataset.download`` with JSON keyword arguments read from stdin.

img2dataset installs a SIGINT handler, prints progress and builds its filesystems from fsspec's
environment configuration at import; running it in its own process keeps all of that away from the
caller and gives its S3 workers the endpoint exported by :meth:`Storage.subprocess_env`. The runner dies
with its parent (Linux ``PR_SET_PDEATHSIG``) and takes its worker processes with it on SIGTERM, so a
killed Dagster step leaves no orphan still writing shards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import traceback
from types import FrameType

PARENT_PID_ENV = "FACELAKE_DOWNLOAD_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _kill_children() -> None:
    for child in multiprocessing.active_children():
        child.kill()


def _terminate_children(signum: int, frame: FrameType | None) -> None:
    _kill_children()
    os._exit(128 + signum)


def _die_with_parent() -> None:
    signal.signal(signal.SIGTERM, _terminate_children)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and os.getppid() != int(parent):
        sys.exit("the process that started this download is gone")


def main() -> None:
    _die_with_parent()
    kwargs = json.loads(sys.stdin.read())
    from img2dataset import download

    try:
        download(**kwargs)
    except Exception:
        # img2dataset's logger process is not a daemon and would keep this process alive forever
        traceback.print_exc()
        _kill_children()
        sys.exit(1)


if __name__ == "__main__":
    main()
