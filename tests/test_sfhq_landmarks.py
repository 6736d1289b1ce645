"""SFHQ landmarks: every number of the table against the fixture's known points, the declared (ASSUMED)
index table, invalid rows with their reasons, corrupt / malformed / pickled npz files as problems."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from facelake.lake.storage import Storage
from facelake.sfhq.landmarks import (
    LANDMARKS_SCHEMA,
    landmarks_table,
    measure_points,
    read_landmarks,
    read_part_landmarks,
    table_points,
)
from facelake.sfhq.layout import LANDMARKS, SfhqPart, scan_part
from facelake.sfhq.settings import IBUG68_GROUPS, LandmarkIndex, SfhqSettings
from synthetic.sfhq import Faults, encode_npz, write_sfhq_part


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sfhq")
    storage = Storage(str(folder))
    faults = Faults(
        corrupt_npz=1, wrong_shape_npz=1, nan_landmarks=1, outside_landmarks=1, missing_landmarks=1
    )
    return write_sfhq_part(storage, str(folder / "part1"), 12, faults=faults)


@pytest.fixture(scope="module")
def result(fixture):
    return read_part_landmarks(scan_part(SfhqPart(fixture.storage, fixture.folder, "1")), threads=2)


def test_every_row_matches_the_fixture_points_box_and_eye_line(fixture, result):
    table = result.table
    unreadable = fixture.faulty("corrupt_npz", "wrong_shape_npz", "missing_landmarks")
    assert table["name"].to_pylist() == [n for n in fixture.names if n not in unreadable]
    assert table.schema.remove_metadata() == LANDMARKS_SCHEMA
    points = table_points(table)
    for i, row in enumerate(table.to_pylist()):
        truth = fixture.images[row["name"]]
        np.testing.assert_array_equal(points[i], truth.points)  # exactly as stored (NaN included)
        np.testing.assert_array_equal(np.asarray(row["box"], np.float32), truth.landmark_box)
        # under the assumed iBUG order, the eye groups are hexagons centred on the map's eye rectangles
        assert (row["left_eye_x"], row["left_eye_y"]) == truth.left_eye
        assert (row["right_eye_x"], row["right_eye_y"]) == truth.right_eye
        (lx, ly), (rx, ry) = truth.left_eye, truth.right_eye
        assert row["inter_ocular"] == pytest.approx(math.hypot(rx - lx, ry - ly), rel=1e-6)
        assert row["roll_deg"] == pytest.approx(
            math.degrees(math.atan2(ry - ly, rx - lx)), rel=1e-5, abs=1e-5
        )
        assert row["inter_ocular"] == pytest.approx(truth.map.inter_ocular, rel=1e-6)
        assert row["valid"] is truth.landmark_valid


def test_invalid_rows_stay_with_their_reason_and_are_reported(fixture, result):
    rows = {r["name"]: r for r in result.table.to_pylist()}
    (nan_name,) = fixture.fault("nan_landmarks")
    (out_name,) = fixture.fault("outside_landmarks")
    assert rows[nan_name]["valid"] is False and rows[nan_name]["invalid_reason"] == "non-finite point(s) [70]"
    truth = fixture.images[out_name].points
    assert rows[out_name]["invalid_reason"] == (
        f"point(s) outside 0..1024: 3 (-12.5, {truth[3, 1]:g}), 90 ({truth[90, 0]:g}, 1030)"
    )
    assert rows[nan_name]["box"] == pytest.approx(fixture.images[nan_name].landmark_box.tolist())
    valid = [r for r in rows.values() if r["valid"]]
    assert len(valid) == len(rows) - 2 and all(r["invalid_reason"] is None for r in valid)
    problems = {(r["name"], r["kind"]): r for r in result.problems.to_pylist()}
    assert set(problems) == {
        (fixture.fault("corrupt_npz")[0], "unreadable"),
        (fixture.fault("wrong_shape_npz")[0], "invalid"),
        (nan_name, "invalid"),
        (out_name, "invalid"),
    }
    assert problems[(fixture.fault("corrupt_npz")[0], "unreadable")]["problem"].startswith("BadZipFile")
    assert problems[(fixture.fault("wrong_shape_npz")[0], "invalid")]["problem"] == (
        "'landmarks' has shape (68, 2), expected (110, 2)"
    )
    assert all(r["modality"] == LANDMARKS and r["file"].startswith("landmarks/") for r in problems.values())


def test_the_declared_index_is_recorded_as_assumed_and_one_change_moves_every_eye_measure(fixture, result):
    metadata = {k.decode(): v.decode() for k, v in result.table.schema.metadata.items()}
    assert metadata["landmark_index_assumed"] == "true"
    assert (
        metadata["landmark_index_label"]
        == "landmark order ASSUMED (unverified): left_eye 36-41, right_eye 42-47"
    )
    assert json.loads(metadata["landmark_index"])["groups"] == IBUG68_GROUPS
    # a user who knows the true order fixes it in one place: here the eyes are declared as two brow groups
    fixed = LandmarkIndex(
        assumed=False, groups={**IBUG68_GROUPS, "left_eye": [17, 18], "right_eye": [25, 26]}
    )
    other = read_landmarks(SfhqPart(fixture.storage, fixture.folder, "1"), [fixture.names[0]], fixed)
    row = other.table.to_pylist()[0]
    points = fixture.images[fixture.names[0]].points.astype(np.float64)
    assert row["left_eye_x"] == pytest.approx(points[[17, 18], 0].mean())
    assert row["right_eye_y"] == pytest.approx(points[[25, 26], 1].mean())
    assert other.table.schema.metadata[b"landmark_index_assumed"] == b"false"
    assert SfhqSettings().landmark_index.assumed is True


def test_the_index_table_is_validated():
    with pytest.raises(ValidationError, match=r"outside 0\.\.109"):
        LandmarkIndex(groups={"left_eye": [36], "right_eye": [110]})
    with pytest.raises(ValidationError, match="needs \\['right_eye'\\]"):
        LandmarkIndex(groups={"left_eye": [36]})
    with pytest.raises(ValidationError, match="is empty"):
        LandmarkIndex(groups={"left_eye": [], "right_eye": [1]})


def test_measures_of_hand_made_points():
    points = np.zeros((2, 110, 2), np.float32)
    points[:, :, 0], points[:, :, 1] = 100, 200
    points[0, 36:42] = [10, 20]  # left eye centre (10, 20)
    points[0, 42:48] = [40, 50]  # right eye centre (40, 50): 45 degrees clockwise
    points[1, 36:42] = [40, 20]  # swapped sides: the eye line is ordered by x
    points[1, 42:48] = [10, 50]
    points[1, 5] = [1024, 0]  # on the border: still inside
    measures = measure_points(points, LandmarkIndex())
    np.testing.assert_allclose(measures.inter_ocular, [math.hypot(30, 30)] * 2, rtol=1e-6)
    np.testing.assert_allclose(measures.roll_deg, [45.0, -45.0], rtol=1e-6)
    np.testing.assert_array_equal(measures.box, [[10, 20, 100, 200], [10, 0, 1024, 200]])
    assert measures.valid.tolist() == [True, True]
    points[1, 7] = [1024.5, 3]
    points[0, 1] = [np.inf, 1]
    measures = measure_points(points, LandmarkIndex())
    assert measures.invalid_reason == ["non-finite point(s) [1]", "point(s) outside 0..1024: 7 (1024.5, 3)"]


def test_an_all_nan_face_has_a_null_box_and_null_eyes():
    points = np.full((1, 110, 2), np.nan, np.float32)
    table = landmarks_table(["x"], points, LandmarkIndex())
    row = table.to_pylist()[0]
    assert row["box"] is None and row["left_eye_x"] is None and row["roll_deg"] is None
    assert row["valid"] is False and row["invalid_reason"].startswith("non-finite point(s) [0, 1, 2")
    sink = io.BytesIO()
    pq.write_table(table, sink)  # the nested fixed-size lists survive parquet
    back = pq.read_table(io.BytesIO(sink.getvalue()))
    assert back.schema.field("points").type == pa.list_(pa.list_(pa.float32(), 2), 110)


def test_an_npz_with_a_pickled_object_is_refused_and_nothing_in_it_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    storage = Storage(str(tmp_path))
    folder = tmp_path / "part"
    buffer = io.BytesIO()
    np.savez(buffer, landmarks=np.array([Payload()], dtype=object))
    storage.write_bytes(str(folder / "landmarks" / "evil.npz"), buffer.getvalue())
    storage.write_bytes(str(folder / "landmarks" / "nokey.npz"), encode_npz(np.zeros((110, 2)), key="points"))
    result = read_landmarks(SfhqPart(storage, str(folder), "1"), ["evil", "nokey"])
    assert result.table.num_rows == 0
    problems = {r["name"]: r for r in result.problems.to_pylist()}
    assert problems["evil"]["kind"] == "unreadable" and "allow_pickle=False" in problems["evil"]["problem"]
    assert problems["nokey"]["problem"] == "no 'landmarks' array in the npz (it holds ['points'])"
    assert not os.path.exists(marker)


def test_threads_and_batches_do_not_change_the_table(fixture, result):
    part = SfhqPart(fixture.storage, fixture.folder, "1")
    names = result.table["name"].to_pylist()
    single = read_landmarks(part, names, threads=1, batch=3)
    np.testing.assert_array_equal(table_points(single.table), table_points(result.table))  # NaN == NaN
    assert single.table.drop_columns(["points"]).equals(result.table.drop_columns(["points"]))
    assert single.problems.to_pylist() == [r for r in result.problems.to_pylist() if r["name"] in names]
