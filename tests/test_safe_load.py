"""Safe loading of outside .pth and pickle files: allowlisted numpy works, anything else is refused unrun."""

from __future__ import annotations

import fractions
import io
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

from facelake.lake.errors import InputError, UnsafePickleError
from facelake.lake.safe_load import load_torch_weights_only, restricted_unpickle
from synthetic.laion_pth import (
    Numpy1Pickler,
    random_sample2detect,
    save_sample2detect,
    torch_save_numpy1,
    write_malicious_pickle,
    write_malicious_pth,
)

# What each payload's global is called once pickled (protocol 2 spells subprocess the Python-2 way).
REFUSED_NAMES = {
    "open": ("io.open",),
    "os.system": ("posix.system", "os.system"),
    "subprocess": ("subprocess.call", "commands.call"),
    "exec": ("builtins.exec",),
}


def data_pkl(path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))


def assert_same_detections(loaded: dict, expected: dict) -> None:
    assert list(loaded) == list(expected)
    for sample_id, faces in expected.items():
        assert len(loaded[sample_id]) == len(faces)
        for (box, landmarks, score), (box2, landmarks2, score2) in zip(loaded[sample_id], faces, strict=True):
            assert box.dtype == np.float32 and np.array_equal(box, box2)
            assert landmarks.shape == (5, 2) and np.array_equal(landmarks, landmarks2)
            assert isinstance(score, np.float32) and score == score2


@pytest.fixture
def detections() -> dict:
    return random_sample2detect(np.array([5, 17, 23, 40, 41], np.int64), seed=1)


def test_fixture_carries_numpy1_global_names(tmp_path, detections):
    path = tmp_path / "sample2detect_0.pth"
    save_sample2detect(str(path), detections)
    raw = data_pkl(path)
    assert b"numpy.core.multiarray" in raw
    assert b"numpy._core" not in raw


@pytest.mark.parametrize("numpy1_names", [True, False], ids=["numpy1-names", "numpy2-names"])
def test_loads_numpy_arrays_and_scalars_under_both_names(tmp_path, detections, numpy1_names):
    path = str(tmp_path / "sample2detect_0.pth")
    if numpy1_names:
        torch_save_numpy1(detections, path)
    else:
        torch.save(detections, path)
    assert_same_detections(load_torch_weights_only(path), detections)


def test_loads_tensors_lists_and_empty_arrays(tmp_path):
    path = str(tmp_path / "mixed.pth")
    obj = [torch.arange(4), np.zeros(0, np.int64), [1, 2], {"a": np.float16(1.5)}]
    torch_save_numpy1(obj, path)
    loaded = load_torch_weights_only(path)
    assert torch.equal(loaded[0], obj[0])
    assert loaded[1].dtype == np.int64 and loaded[1].shape == (0,)
    assert loaded[2] == [1, 2] and loaded[3]["a"] == np.float16(1.5)


def test_loads_through_storage_uri(any_storage, detections):
    uri = any_storage.uri("laion_face", "sample2detect_3.pth")
    buffer = io.BytesIO()
    torch.save(detections, buffer)
    any_storage.write_bytes(uri, buffer.getvalue())
    assert_same_detections(load_torch_weights_only(uri, any_storage), detections)


def test_extra_globals_are_admitted_only_when_given(tmp_path):
    path = str(tmp_path / "fraction.pth")
    torch.save({"ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UnsafePickleError, match=re.escape("fractions.Fraction")):
        load_torch_weights_only(path)
    assert load_torch_weights_only(path, extra_globals=[fractions.Fraction]) == {
        "ratio": fractions.Fraction(1, 3)
    }


def test_payload_fixture_is_live(tmp_path):
    """The malicious fixture really would run if loaded unsafely (our own file, in a temp dir)."""
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    write_malicious_pth(str(path), str(marker), via="exec")
    torch.load(str(path), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("via", sorted(REFUSED_NAMES))
def test_malicious_pth_is_refused_and_nothing_runs(tmp_path, via):
    path, marker = tmp_path / "laion_face_ids.pth", tmp_path / "pwned"
    write_malicious_pth(str(path), str(marker), via=via)
    with pytest.raises(UnsafePickleError) as caught:
        load_torch_weights_only(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: refused to unpickle global ")
    assert any(name in message for name in REFUSED_NAMES[via]), message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("via", sorted(REFUSED_NAMES))
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, via, protocol):
    path, marker = tmp_path / "features.pickle", tmp_path / "pwned"
    write_malicious_pickle(str(path), str(marker), via=via, protocol=protocol)
    with pytest.raises(UnsafePickleError) as caught:
        restricted_unpickle(path.read_bytes(), str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: refused to unpickle global ")
    assert any(name in message for name in REFUSED_NAMES[via]), message
    assert not marker.exists()


NOT_A_TORCH_FILE = (
    "not a torch file (neither a zip archive nor the legacy torch format); refused, nothing was executed"
)


class Touch:
    """Pickles to ``open(marker, "w")``: creates ``marker`` when (and only when) the pickle is executed."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_plain_pickle_payload_is_live(tmp_path):
    """The plain malicious pickle really would run if unpickled (our own file, in a temp dir)."""
    path, marker = tmp_path / "features.pickle", tmp_path / "pwned"
    write_malicious_pickle(str(path), str(marker), via="exec", protocol=4)
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("via", sorted(REFUSED_NAMES))
def test_plain_pickle_given_as_pth_is_refused_as_not_a_torch_file(tmp_path, via, protocol):
    """Once "Unsupported operand 149" (protocol 4/5's FRAME) or a refused global: now one clear message."""
    path, marker = tmp_path / "laion_face_ids.pth", tmp_path / "pwned"
    write_malicious_pickle(str(path), str(marker), via=via, protocol=protocol)
    with pytest.raises(InputError) as caught:
        load_torch_weights_only(str(path))
    assert str(caught.value) == f"{path}: {NOT_A_TORCH_FILE}"
    assert not marker.exists()


def test_legacy_torch_format_is_still_a_torch_file(tmp_path, detections):
    """torch.save's pre-1.6 format (a pickle led by torch's magic number) loads, and is still allowlisted."""
    path = tmp_path / "legacy.pth"
    torch.save(detections, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert_same_detections(load_torch_weights_only(str(path)), detections)
    evil, marker = tmp_path / "evil_legacy.pth", tmp_path / "pwned"
    torch.save({0: torch.arange(3), 1: Touch(marker)}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError, match=re.escape(f"{evil}: refused to unpickle global io.open")):
        load_torch_weights_only(str(evil))
    assert not marker.exists()


def test_a_pickled_magic_number_alone_is_not_enough_to_run_anything(tmp_path):
    """The legacy check only reads opcodes: a pickle led by the magic number then a payload goes to
    torch's weights-only unpickler, which refuses the payload's global."""
    path, marker = tmp_path / "crafted.pth", tmp_path / "pwned"
    path.write_bytes(
        pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2) + pickle.dumps(Touch(marker), protocol=2)
    )
    with pytest.raises(InputError) as caught:
        load_torch_weights_only(str(path))
    assert NOT_A_TORCH_FILE not in str(caught.value)
    assert not marker.exists()


def test_truncated_pth_is_an_input_error_naming_the_file(tmp_path, detections):
    whole, cut = tmp_path / "whole.pth", tmp_path / "sample2detect_7.pth"
    save_sample2detect(str(whole), detections)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as caught:
        load_torch_weights_only(str(cut))
    assert not isinstance(caught.value, UnsafePickleError)
    assert str(caught.value).startswith(f"{cut}: truncated or not a torch file")


def test_not_a_torch_file_and_missing_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(InputError, match=re.escape(f"{junk}: {NOT_A_TORCH_FILE}")):
        load_torch_weights_only(str(junk))
    junk.write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(f"{junk}: {NOT_A_TORCH_FILE}")):
        load_torch_weights_only(str(junk))
    with pytest.raises(InputError, match=re.escape("absent.pth: file not found")):
        load_torch_weights_only(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickle_reads_sfhq_style_features(protocol):
    features = {
        "CLIP_ViTL_14@336": np.linspace(0, 1, 768, dtype=np.float32).reshape(1, 768),
        "arcface": np.arange(512, dtype=np.float64),
        "meta": [1, 2.5, ("x", None), {3, 4}, complex(1, 2), b"raw", np.int64(7)],
    }
    loaded = restricted_unpickle(pickle.dumps(features, protocol=protocol), "a.pickle")
    for name in ("CLIP_ViTL_14@336", "arcface"):
        assert loaded[name].dtype == features[name].dtype and np.array_equal(loaded[name], features[name])
    assert loaded["meta"] == features["meta"]


def test_restricted_unpickle_reads_numpy1_names():
    buffer = io.BytesIO()
    Numpy1Pickler(buffer, protocol=2).dump({"CLIP": np.ones((1, 4), np.float32), "score": np.float32(0.5)})
    assert b"numpy.core.multiarray" in buffer.getvalue()
    loaded = restricted_unpickle(buffer.getvalue(), "old.pickle")
    assert np.array_equal(loaded["CLIP"], np.ones((1, 4), np.float32)) and loaded["score"] == np.float32(0.5)


def test_restricted_unpickle_truncated_is_an_input_error():
    data = pickle.dumps({"CLIP": np.zeros((1, 768), np.float32)})
    with pytest.raises(InputError, match=re.escape("b.pickle: truncated or not a pickle")) as caught:
        restricted_unpickle(data[: len(data) // 2], "b.pickle")
    assert not isinstance(caught.value, UnsafePickleError)
