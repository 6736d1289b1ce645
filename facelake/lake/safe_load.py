"""Loading ``.pth`` and pickle files from the internet without running anything they carry (DESIGN §3).

Two doors, both allowlists:

- :func:`load_torch_weights_only` — ``torch.load(weights_only=True)`` with the numpy globals that the
  LAION-Face releases need, under their numpy-2 names (``numpy._core.multiarray``) and the numpy-1 names
  the released files were pickled with (``numpy.core.multiarray``). A file torch would not recognise as its
  own (neither a zip archive nor the legacy format led by torch's magic number; e.g. a plain pickle) is
  refused up front, from its first bytes and opcodes, before any unpickling.
- :func:`restricted_unpickle` — a plain :class:`pickle.Unpickler` whose ``find_class`` admits only numpy
  array/dtype/scalar reconstruction and a few harmless builtins (SFHQ ``pretrained_features/*.pickle``).

Anything else is refused with :class:`~facelake.lake.errors.UnsafePickleError` naming the file and the global;
the refusal happens when the global is looked up, before it could be called. Weights-only unpickling is slow
(~9 s per 100k LAION samples): convert such files to parquet once and never read them again.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch

from facelake.lake.errors import InputError, UnsafePickleError
from facelake.lake.storage import Storage, is_remote

# dtype classes an allowlisted array or scalar may carry (BUILD is checked against the dtype's class).
# Object, void (structured) and variable-width StringDType are left out on purpose.
_SAFE_DTYPE_CODES = ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d", "g", "F", "D", "G")
_SAFE_DTYPE_CLASSES: tuple[type, ...] = tuple(
    type(np.dtype(code)) for code in (*_SAFE_DTYPE_CODES, "M8[ns]", "m8[ns]", "U1", "S1")
)


def _numpy_functions() -> dict[str, Callable[..., Any]]:
    """Qualified name -> object for numpy's reconstruction functions, numpy-1 and numpy-2 spellings."""
    multiarray, numeric = np._core.multiarray, np._core.numeric
    targets = {
        "multiarray._reconstruct": multiarray._reconstruct,
        "multiarray.scalar": multiarray.scalar,
        "numeric._frombuffer": numeric._frombuffer,  # protocol-5 arrays
    }
    return {
        f"{package}.{name}": obj for package in ("numpy._core", "numpy.core") for name, obj in targets.items()
    }


def _numpy_types() -> dict[str, type]:
    """Qualified name -> numpy class for ndarray, dtype and the allowlisted dtype classes."""
    names: dict[str, type] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    names.update({f"numpy.dtypes.{cls.__name__}": cls for cls in _SAFE_DTYPE_CLASSES})
    return names


# Protocol 2 pickles an empty array's data as ``__builtin__.bytes()`` (Python-2 name, kept by fix_imports).
_EMPTY_BYTES = {"__builtin__.bytes": bytes, "builtins.bytes": bytes}


def torch_safe_globals(extra_globals: Iterable[Any] = ()) -> list[Any]:
    """The allowlist handed to ``torch.serialization.safe_globals``: (object, qualified name) pairs."""
    allowed = {**_numpy_functions(), **_numpy_types(), **_EMPTY_BYTES}
    return [(obj, name) for name, obj in allowed.items()] + list(extra_globals)


# --- torch.load(weights_only=True) --------------------------------------------------------------------

# Messages of torch's weights-only unpickler that mean "refused", as opposed to "broken": (pattern, label).
_REFUSAL_PATTERNS = (
    (re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"), "global"),
    (re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"), "global"),
    (re.compile(r"Trying to call reduce for unrecognized function (.+?)(?:\n|$)"), "call to"),
    (re.compile(r"Can only build .*?but got (.+?)(?:\n|$)"), "object of"),
    (re.compile(r"Can only create new object .*?but got (.+?)(?:\n|$)"), "object of"),
)


def _read_source(path_or_uri: str, storage: Storage | None) -> bytes:
    try:
        if storage is not None or is_remote(path_or_uri):
            storage = storage or Storage(path_or_uri.rsplit("/", 1)[0])
            return storage.read_bytes(path_or_uri)
        with open(path_or_uri, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputError(path_or_uri, "file not found") from None
    except IsADirectoryError:
        raise InputError(path_or_uri, "is a directory, expected a file") from None


# What torch.load itself recognises (torch.serialization): a zip archive by its local-file-header magic
# (``_is_zipfile``), else the legacy format, a pickle stream whose first object is ``MAGIC_NUMBER``
# (``_legacy_load`` refuses "Invalid magic number" otherwise). The legacy tar format is only tried on real
# files, never on the in-memory buffer we hand torch, so it is not a torch file here either.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER
_INT_OPCODES = frozenset({"LONG", "LONG1", "LONG4", "INT"})
NOT_A_TORCH_FILE = (
    "not a torch file (neither a zip archive nor the legacy torch format); refused, nothing was executed"
)


def _starts_with_legacy_magic(data: bytes) -> bool:
    """Whether the first pickled object is torch's magic number, read opcode by opcode (nothing executed)."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in ("PROTO", "FRAME"):
                continue
            return opcode.name in _INT_OPCODES and arg == _LEGACY_MAGIC
    except Exception:  # not a pickle stream at all (pickletools raises ValueError and friends)
        return False
    return False


def is_torch_file(data: bytes) -> bool:
    """A ``torch.save`` file: a zip archive, or the legacy format's pickle led by torch's magic number."""
    return data.startswith(_ZIP_MAGIC) or _starts_with_legacy_magic(data)


def _refused_global(message: str) -> str | None:
    """What torch refused ("global io.open"), from its error message; None when it is not a refusal."""
    for pattern, label in _REFUSAL_PATTERNS:
        match = pattern.search(message)
        if match:
            name = match.group(1).strip()
            if label == "global" and "." not in name:
                name = f"builtins.{name}"  # torch prints builtins without their module ("exec")
            return f"{label} {name}"
    return None


def _all_refused_globals(data: bytes, extra_globals: Iterable[Any]) -> list[str]:
    """Every non-allowlisted GLOBAL in a torch zip file, found by reading opcodes (nothing executed)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return []
    try:
        with torch.serialization.safe_globals(torch_safe_globals(extra_globals)):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:
        return []


def load_torch_weights_only(
    path_or_uri: str, storage: Storage | None = None, extra_globals: Iterable[Any] = ()
) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True`` plus the numpy allowlist, onto the CPU.

    ``extra_globals`` are further objects or ``(object, "qualified.name")`` pairs to admit.
    Raises :class:`UnsafePickleError` for a global outside the allowlist (nothing executed) and
    :class:`InputError` for a missing, truncated or non-torch file. A file that is neither a zip archive nor
    the legacy torch format (a plain pickle, an HTML error page) is refused before torch sees it.
    """
    extra_globals = list(extra_globals)
    data = _read_source(path_or_uri, storage)
    if not is_torch_file(data):
        raise InputError(path_or_uri, NOT_A_TORCH_FILE)
    try:
        with torch.serialization.safe_globals(torch_safe_globals(extra_globals)):
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused is None:
            raise InputError(path_or_uri, f"truncated or not a torch file: {_first_line(exc)}") from None
        others = [name for name in _all_refused_globals(data, extra_globals) if f"global {name}" != refused]
        also = f"; it also asks for {', '.join(others)}" if others else ""
        raise UnsafePickleError(
            path_or_uri, f"refused to unpickle {refused} (not allowlisted{also}); nothing was executed"
        ) from None
    except (RuntimeError, EOFError, ValueError, TypeError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise InputError(path_or_uri, f"truncated or not a torch file: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The informative part of an exception message (torch wraps its own in paragraphs of advice)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


# --- restricted plain pickle ---------------------------------------------------------------------------

_SAFE_BUILTINS: dict[str, Any] = {
    "_codecs.encode": codecs.encode,  # bytes under protocol 2
    "builtins.bytes": bytes,
    "builtins.complex": complex,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and scalars (numpy-1 and numpy-2 names), dicts, lists, tuples, scalars."""

    _allowed: ClassVar[dict[str, Any]] = {**_numpy_functions(), **_numpy_types(), **_SAFE_BUILTINS}

    def __init__(self, file: io.BytesIO, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        # Protocol <3 pickles may carry Python-2 names (__builtin__.set); map them as pickle itself does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self._allowed:
            return self._allowed[qualified]
        raise UnsafePickleError(
            self.path, f"refused to unpickle global {qualified} (not allowlisted); nothing was executed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self.path, "refused a persistent id (not a plain pickle)")


def restricted_unpickle(data: bytes, path: str) -> Any:
    """Unpickle ``data`` (read from ``path``, named in errors) admitting only numpy arrays and plain values.

    Raises :class:`UnsafePickleError` for any other global and :class:`InputError` for a broken pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"truncated or not a pickle: {_first_line(exc)}") from None
