"""Reading many small files of one modality in a thread pool, in order, with per-file problems.

An SFHQ part is ~100k files per modality. Each file is read through the storage (local or S3) and parsed in
a worker thread: PNG/JPEG decoding (PIL) and numpy's large-array operations release the GIL, and S3 reads
wait on the network, so threads overlap them. Files are handed out in chunks (a few per task, to keep the
executor's overhead small) with a bounded number of chunks in flight, so memory stays flat whatever the part
size. Results come back in the order of ``names``.

A file that cannot be used is not an exception for the caller: the worker turns the expected failures
(missing file, corrupt bytes, a refused pickle, a format violation) into a :class:`FileProblem` that the
caller writes into the problems table; anything else is a bug and propagates.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from facelake.lake.errors import InputError, UnsafePickleError
from facelake.lake.images import DECODE_ERRORS
from facelake.sfhq.layout import UNREADABLE, UNSAFE, SfhqPart

T = TypeVar("T")

READ_ERRORS = (*DECODE_ERRORS, KeyError, zipfile.BadZipFile, pickle.UnpicklingError, UnicodeDecodeError)
"""What reading and parsing a corrupt file may raise (besides :class:`FileProblem` and ``InputError``)."""


class FileProblem(Exception):
    """One file that a stage could not use: the problem kind (``facelake.sfhq.layout``) and what is wrong."""

    def __init__(self, kind: str, problem: str) -> None:
        self.kind = kind
        self.problem = problem
        super().__init__(f"{kind}: {problem}")


def default_threads(threads: int | None = None) -> int:
    """``threads``, or the CPU count (at least 1)."""
    return max(1, threads if threads is not None else (os.cpu_count() or 1))


def _guarded(parse: Callable[[str, bytes], T], storage_read: Callable[[str], bytes], name: str, uri: str):
    try:
        return parse(name, storage_read(uri))
    except FileProblem as problem:
        return problem
    except FileNotFoundError:
        return FileProblem(UNREADABLE, "file not found (deleted after the listing?)")
    except UnsafePickleError as error:
        return FileProblem(UNSAFE, error.problem)
    except InputError as error:
        return FileProblem(UNREADABLE, error.problem)
    except READ_ERRORS as error:
        return FileProblem(UNREADABLE, describe_error(error))


_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


def describe_error(error: BaseException) -> str:
    """``Type: message`` without object addresses (PIL names the in-memory buffer it could not read)."""
    message = _OBJECT_REPR.sub("", str(error)).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def map_files(
    part: SfhqPart,
    modality: str,
    names: Sequence[str],
    parse: Callable[[str, bytes], T],
    *,
    threads: int | None = None,
    chunk: int = 8,
    in_flight: int | None = None,
) -> Iterator[tuple[str, T | FileProblem]]:
    """``(name, parse(name, bytes) or FileProblem)`` for each name's ``modality`` file, in order.

    ``threads`` workers (default: the CPU count; 0 or 1 parses in the calling thread), ``chunk`` files a
    task, at most ``in_flight`` tasks pending (default ``4 * threads``).
    """
    storage = part.storage
    read = storage.read_bytes
    uris = [part.uri(modality, name) for name in names]
    workers = default_threads(threads)

    def run(start: int) -> list[T | FileProblem]:
        stop = min(start + chunk, len(names))
        return [_guarded(parse, read, names[i], uris[i]) for i in range(start, stop)]

    starts = range(0, len(names), max(1, chunk))
    if workers <= 1:
        for start in starts:
            yield from zip(names[start : start + chunk], run(start), strict=True)
        return
    limit = in_flight or 4 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix=f"sfhq-{modality}") as pool:
        pending: deque[tuple[int, Future]] = deque()
        for start in starts:
            pending.append((start, pool.submit(run, start)))
            if len(pending) >= limit:
                first, future = pending.popleft()
                yield from zip(names[first : first + chunk], future.result(), strict=True)
        while pending:
            first, future = pending.popleft()
            yield from zip(names[first : first + chunk], future.result(), strict=True)
