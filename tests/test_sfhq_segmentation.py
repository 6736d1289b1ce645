"""SFHQ segmentation statistics: every number against the fixture's rectangle geometry (class areas, eye
centroids, inter-ocular distance and roll, skin centre column, hairline row, height and coverage), maps that
cannot be used reported as problems, and the exactness of the coarse-window shortcut."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from facelake.lake.storage import Storage
from facelake.sfhq.layout import SEGMENTATIONS, SfhqPart, scan_part
from facelake.sfhq.reader import FileProblem
from facelake.sfhq.segmentation import (
    CLASSES,
    FRACTION_COLUMNS,
    SEGMENTATION_SCHEMA,
    map_statistics,
    parse_map,
    read_part_segmentations,
    read_segmentations,
    segmentation_table,
)
from synthetic.sfhq import Faults, encode_png, write_sfhq_part


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sfhq")
    faults = Faults(bad_label_map=1, corrupt_png=1, rgb_map=1, missing_segmentation=1)
    return write_sfhq_part(Storage(str(folder)), str(folder / "part1"), 16, faults=faults)


@pytest.fixture(scope="module")
def result(fixture):
    return read_part_segmentations(scan_part(SfhqPart(fixture.storage, fixture.folder, "1")), threads=2)


def test_every_number_matches_the_rectangle_geometry(fixture, result):
    table = result.table
    bad = fixture.faulty("bad_label_map", "corrupt_png", "rgb_map", "missing_segmentation")
    assert table["name"].to_pylist() == [n for n in fixture.names if n not in bad]
    assert table.schema == SEGMENTATION_SCHEMA and len(FRACTION_COLUMNS) == len(CLASSES) == 19
    for row in table.to_pylist():
        truth = fixture.images[row["name"]].map
        assert (row["width"], row["height"]) == (1024, 1024)
        fractions = np.array([row[c] for c in FRACTION_COLUMNS], np.float32)
        np.testing.assert_array_equal(fractions, truth.fractions.astype(np.float32))  # exact: counts / 2^20
        assert row["face_fraction"] == np.float32(truth.counts[1:14].sum() / 2**20)
        assert row["hair_fraction"] == np.float32(truth.fractions[17])
        assert row["background_fraction"] == np.float32(truth.fractions[0])
        assert (row["l_eye_x"], row["l_eye_y"]) == truth.eyes[4]
        assert (row["r_eye_x"], row["r_eye_y"]) == truth.eyes[5]
        assert row["inter_ocular"] == pytest.approx(truth.inter_ocular, rel=1e-6)
        assert row["roll_deg"] == pytest.approx(truth.roll_deg, rel=1e-5, abs=1e-5)
        assert row["skin_center_x"] == truth.skin_center_x
        assert row["hairline_y"] == truth.hairline_y
        if truth.hairline_y is None:
            assert row["hairline_height"] is None and row["hairline_height_iod"] is None
        else:
            assert row["hairline_height"] == pytest.approx(truth.hairline_height, rel=1e-6)
            assert row["hairline_height_iod"] == pytest.approx(
                truth.hairline_height / truth.inter_ocular, rel=1e-6
            )
        assert row["hairline_coverage"] == pytest.approx(truth.hairline_coverage, rel=1e-6)


def test_the_fixture_covers_the_cases_the_measures_distinguish(fixture, result):
    rows = {r["name"]: r for r in result.table.to_pylist()}
    styles = {name: fixture.images[name].style for name in rows}
    bald = [n for n, s in styles.items() if not s.hair]
    assert bald and all(rows[n]["hairline_y"] is None and rows[n]["hairline_coverage"] == 0 for n in bald)
    partial = [r["hairline_coverage"] for r in rows.values() if 0 < r["hairline_coverage"] < 1]
    assert partial, "some faces have hair over only part of the skin"
    assert {round(r["roll_deg"]) for r in rows.values()} - {0}, "some faces are rolled"
    swapped = [n for n, s in styles.items() if s.swap_eye_labels]
    assert swapped and all(rows[n]["l_eye_x"] > rows[n]["r_eye_x"] for n in swapped)
    for column in ("frac_eye_g", "frac_ear_r", "frac_neck_l", "frac_hat"):
        values = [rows[n][column] for n in rows]
        assert 0 in values and max(values) > 0, column


def test_unusable_maps_are_problems_not_rows(fixture, result):
    problems = {r["name"]: r for r in result.problems.to_pylist()}
    (bad_label,) = fixture.fault("bad_label_map")
    (corrupt,) = fixture.fault("corrupt_png")
    (rgb,) = fixture.fault("rgb_map")
    assert set(problems) == {bad_label, corrupt, rgb}
    assert problems[bad_label]["kind"] == "invalid"
    assert problems[bad_label]["problem"] == "labels outside 0-18: 25 (4096 px)"  # the 64 x 64 px patch
    assert problems[corrupt]["kind"] == "unreadable"
    assert problems[corrupt]["problem"] == "UnidentifiedImageError: cannot identify image file"
    assert problems[rgb] == {
        "name": rgb,
        "modality": SEGMENTATIONS,
        "file": f"segmentations/{rgb}.png",
        "kind": "invalid",
        "problem": "mode RGB, expected L (one class label per pixel)",
    }


def test_size_check_and_palette_maps():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:6] = 1
    with pytest.raises(FileProblem, match=r"size 8x8, expected 1024x1024"):
        parse_map("x", encode_png(labels))
    stats = parse_map("x", encode_png(labels), size=None)
    assert stats.counts.tolist() == [56, 8] + [0] * 17
    palette = Image.fromarray(labels, mode="L").convert("P")  # the same indices in a palette PNG
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert parse_map("x", buffer.getvalue(), size=None).counts.tolist() == stats.counts.tolist()


def test_hand_made_map_measures():
    labels = np.zeros((40, 40), np.uint8)
    labels[10:30, 8:28] = 1  # skin rows 10-29, columns 8-27
    labels[4:10, 8:20] = 17  # hair above the left 12 of its 20 columns
    labels[15:17, 11:15] = 4  # eye centroid (13, 16)
    labels[19:21, 21:25] = 5  # eye centroid (23, 20): the right-hand eye is 4 px lower
    stats = map_statistics(labels)
    table = segmentation_table(["m"], [stats])
    row = table.to_pylist()[0]
    assert (row["l_eye_x"], row["l_eye_y"], row["r_eye_x"], row["r_eye_y"]) == (13, 16, 23, 20)
    assert row["inter_ocular"] == pytest.approx(math.hypot(10, 4))
    assert row["roll_deg"] == pytest.approx(math.degrees(math.atan2(4, 10)))
    skin_x = (20 * 20 * 18.0 - 8 * 13 - 8 * 23) / (400 - 16)  # rectangle minus the two eyes
    assert row["skin_center_x"] == math.floor(skin_x) == 18
    assert row["hairline_y"] == 10  # column 17 has hair above its topmost skin pixel
    assert row["hairline_height"] == pytest.approx(18 - 10)
    assert row["hairline_height_iod"] == pytest.approx(8 / math.hypot(10, 4))
    assert row["hairline_coverage"] == pytest.approx(12 / 20)
    assert row["frac_skin"] == pytest.approx(384 / 1600) and row["face_fraction"] == pytest.approx(400 / 1600)
    labels[4:10, 8:20] = 0
    labels[4:10, 8:12] = 17  # hair no longer over the centre column
    row = segmentation_table(["m"], [map_statistics(labels)]).to_pylist()[0]
    assert row["hairline_y"] is None and row["hairline_coverage"] == pytest.approx(4 / 20)


def test_no_skin_and_no_eyes_give_nulls():
    labels = np.full((16, 16), 17, np.uint8)
    row = segmentation_table(["m"], [map_statistics(labels)]).to_pylist()[0]
    assert row["hair_fraction"] == 1 and row["face_fraction"] == 0
    for column in ("l_eye_x", "r_eye_y", "inter_ocular", "roll_deg", "skin_center_x", "hairline_y"):
        assert row[column] is None, column
    assert row["hairline_coverage"] is None


def test_a_class_the_coarse_grid_misses_is_still_measured_exactly():
    rng = np.random.default_rng(3)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:40, 10:50] = 1
    labels[21, 13:15] = 4  # a 1-row eye on rows the stride-4 grid does not sample
    labels[30:34, 40:44] = 5
    labels[33, 41] = 4  # and a stray pixel of the same class far away
    extra = rng.integers(0, 64, size=(5, 2))
    labels[extra[:, 0], extra[:, 1]] = 5
    stats = map_statistics(labels)
    for slot, label in ((0, 4), (2, 5)):
        ys, xs = np.nonzero(labels == label)
        assert stats.eyes[slot : slot + 2].tolist() == [xs.mean() + 0.5, ys.mean() + 0.5]
    ys, xs = np.nonzero(labels == 1)
    assert stats.skin_center_x == math.floor(xs.mean() + 0.5)


def test_threads_do_not_change_the_table(fixture, result):
    names = result.table["name"].to_pylist()
    single = read_segmentations(SfhqPart(fixture.storage, fixture.folder, "1"), names, threads=1)
    assert single.table.equals(result.table) and single.problems.num_rows == 0
