"""SFHQ pretrained features: the shipped pickles read through the restricted unpickler into one matrix per
key; a malicious pickle is refused and nothing in it runs; broken files are problems, not crashes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from facelake.lake.errors import UnsafePickleError
from facelake.lake.images import decode_rgb
from facelake.lake.storage import Storage
from facelake.sfhq.features import (
    clip_metadata,
    feature_keys,
    features_matrix,
    parse_features,
    part_features_matrix,
)
from facelake.sfhq.layout import FEATURES, SfhqPart, scan_part
from facelake.sfhq.reader import FileProblem
from synthetic.sfhq import FEATURE_KEY, Faults, malicious_pickle, pickle_features, write_sfhq_part


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sfhq")
    faults = Faults(malicious_pickle=1, truncated_pickle=1, missing_feature_key=1, missing_features=1)
    marker = str(folder / "MALICIOUS_PICKLE_RAN")
    return write_sfhq_part(Storage(str(folder)), str(folder / "part1"), 10, faults=faults, marker=marker)


def test_the_matrix_holds_every_usable_vector_in_name_order(fixture):
    scan = scan_part(SfhqPart(fixture.storage, fixture.folder, "1"))
    result = part_features_matrix(scan, FEATURE_KEY, threads=2)
    bad = fixture.faulty("malicious_pickle", "truncated_pickle", "missing_feature_key", "missing_features")
    assert result.names == [n for n in fixture.names if n not in bad] and len(result.names) == 6
    assert result.key == FEATURE_KEY and result.dimension == 768 and result.matrix.dtype == np.float32
    expected = np.stack([fixture.images[n].features[FEATURE_KEY][0] for n in result.names])
    np.testing.assert_array_equal(result.matrix, expected)
    np.testing.assert_allclose(np.linalg.norm(result.matrix, axis=1), 1.0, rtol=1e-6)  # stored unit vectors


def test_a_malicious_pickle_is_refused_and_nothing_in_it_runs(fixture):
    assert not os.path.exists(fixture.marker)
    result = features_matrix(SfhqPart(fixture.storage, fixture.folder, "1"), fixture.names, FEATURE_KEY)
    (evil,) = fixture.fault("malicious_pickle")
    problems = {r["name"]: r for r in result.problems.to_pylist()}
    assert problems[evil] == {
        "name": evil,
        "modality": FEATURES,
        "file": f"pretrained_features/{evil}.pickle",
        "kind": "unsafe",
        "problem": "refused to unpickle global io.open (not allowlisted); nothing was executed",
    }
    assert not os.path.exists(fixture.marker), "the malicious pickle's payload ran"
    with pytest.raises(UnsafePickleError):
        parse_features("evil.pickle", malicious_pickle(fixture.marker))
    assert not os.path.exists(fixture.marker)


def test_the_malicious_fixture_is_a_live_exploit(tmp_path):
    marker = tmp_path / "plain_pickle_ran"
    pickle.loads(malicious_pickle(str(marker)))  # what an unrestricted reader would do
    assert marker.exists()


def test_broken_pickles_are_problems_by_name(fixture):
    result = features_matrix(SfhqPart(fixture.storage, fixture.folder, "1"), fixture.names, FEATURE_KEY)
    problems = {r["name"]: (r["kind"], r["problem"]) for r in result.problems.to_pylist()}
    (truncated,) = fixture.fault("truncated_pickle")
    (nokey,) = fixture.fault("missing_feature_key")
    (missing,) = fixture.fault("missing_features")
    assert problems[truncated] == (
        "unreadable",
        "truncated or not a pickle: UnpicklingError: pickle data was truncated",
    )
    assert problems[nokey] == ("invalid", "no 'CLIP_ViTL_14@336' features (the file holds ['other_model'])")
    assert problems[missing][0] == "unreadable" and "file not found" in problems[missing][1]
    assert len(problems) == 4


def test_numpy1_and_numpy2_pickles_and_vector_shapes(tmp_path):
    vector = np.arange(4, dtype=np.float16)
    for numpy1 in (True, False):
        data = pickle_features({"a": vector[None, :], "b": [1.0, 2.0]}, numpy1=numpy1)
        assert (b"numpy.core.multiarray" in data) is numpy1
        parsed = parse_features("f.pickle", data)
        np.testing.assert_array_equal(parsed["a"], vector[None, :])
        assert parsed["b"].tolist() == [1.0, 2.0]
    storage = Storage(str(tmp_path))
    part = SfhqPart(storage, str(tmp_path), "1")
    files = {
        "flat": {"k": np.ones(4, np.float64)},
        "row": {"k": np.full((1, 4), 2, np.float32)},
        "wide": {"k": np.ones((1, 5), np.float32)},
        "matrix": {"k": np.ones((2, 4), np.float32)},
        "nan": {"k": np.array([1, np.nan, 0, 0], np.float32)},
    }
    for name, value in files.items():
        storage.write_bytes(part.uri(FEATURES, name), pickle.dumps(value))
    storage.write_bytes(part.uri(FEATURES, "list"), pickle.dumps([1, 2]))
    result = features_matrix(part, [*files, "list"], "k")
    assert result.names == ["flat", "row"] and result.matrix.tolist() == [[1] * 4, [2] * 4]
    problems = {r["name"]: r["problem"] for r in result.problems.to_pylist()}
    assert problems == {
        "wide": "'k' is 5-d, expected 4-d",
        "matrix": "'k' has shape (2, 4), expected (d,) or (1, d)",
        "nan": "'k' holds non-finite values",
        "list": "a pickled list, expected a dict of model name -> array",
    }
    forced = features_matrix(part, ["wide", "flat"], "k", dimension=5)
    assert forced.names == ["wide"]
    with pytest.raises(FileProblem, match="expected numbers"):
        parse_features("s.pickle", pickle.dumps({"k": np.array(["a", "b"])}))


def test_a_features_callable_sees_the_real_image_and_its_keys_are_summarised(tmp_path):
    def mean_colour(name, image):
        return {
            "mean_rgb": image.reshape(-1, 3).mean(axis=0).astype(np.float32),
            FEATURE_KEY: np.ones((1, 3)),
        }

    storage = Storage(str(tmp_path))
    fixture = write_sfhq_part(storage, str(tmp_path / "p"), 3, features=mean_colour, jpeg_quality=95)
    part = SfhqPart(storage, fixture.folder, "1")
    result = features_matrix(part, fixture.names, "mean_rgb")
    for name, vector in zip(result.names, result.matrix, strict=True):
        jpeg = decode_rgb(storage.read_bytes(part.uri("images", name)))
        np.testing.assert_allclose(
            vector, jpeg.reshape(-1, 3).mean(axis=0), atol=1.5
        )  # JPEG moves means a little
    summary = feature_keys(part, fixture.names)
    assert sorted(summary) == [FEATURE_KEY, "mean_rgb"]
    assert summary["mean_rgb"].files == 3 and summary["mean_rgb"].shapes == {"(3,)": 3}
    assert summary[FEATURE_KEY].dtypes == {"float64": 3}
    metadata = clip_metadata(part, result.names)
    assert metadata.column_names == ["image_path", "name"]
    assert metadata["image_path"].to_pylist() == [f"{fixture.folder}/images/{n}.jpg" for n in result.names]
