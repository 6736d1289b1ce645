"""SFHQ sources: the part layout, its index, missing / orphan / unexpected files reported by name, on a local
folder and on S3 (a real local S3 server)."""

from __future__ import annotations

import numpy as np
import pytest

from facelake.lake.errors import InputError, UnknownPartitionError
from facelake.lake.storage import Storage
from facelake.sfhq.landmarks import read_part_landmarks
from facelake.sfhq.layout import (
    FEATURES,
    FLAG_COLUMNS,
    IMAGES,
    LANDMARKS,
    PARTS,
    PROBLEMS_SCHEMA,
    SEGMENTATIONS,
    SfhqPart,
    scan_part,
)
from facelake.sfhq.segmentation import read_part_segmentations
from facelake.sfhq.settings import SfhqSettings
from synthetic.sfhq import Faults, write_sfhq_part


def problem_set(table) -> set[tuple[str, str, str]]:
    return {(r["name"], r["modality"], r["kind"]) for r in table.to_pylist()}


def test_a_clean_part_is_indexed_with_every_modality_and_no_problem(tmp_path):
    storage = Storage(str(tmp_path))
    fixture = write_sfhq_part(storage, str(tmp_path / "part2"), 4, part="2")
    scan = scan_part(SfhqPart(storage, fixture.folder, "2"))
    assert scan.index.column_names == ["name", *FLAG_COLUMNS.values()]
    assert scan.index["name"].to_pylist() == fixture.names == [f"SFHQ_pt2_{i:08d}" for i in range(4)]
    for flag in FLAG_COLUMNS.values():
        assert scan.index[flag].to_pylist() == [True] * 4
    assert scan.problems.num_rows == 0 and scan.problems.schema == PROBLEMS_SCHEMA
    assert scan.counts() == {
        IMAGES: 4,
        LANDMARKS: 4,
        SEGMENTATIONS: 4,
        FEATURES: 4,
        "names": 4,
        "complete": 4,
    }
    assert scan.names(LANDMARKS, SEGMENTATIONS, FEATURES) == fixture.names


def test_missing_orphan_and_unexpected_files_are_reported_by_name(tmp_path):
    storage = Storage(str(tmp_path))
    faults = Faults(
        missing_landmarks=1,
        missing_segmentation=2,
        missing_features=1,
        orphan_landmarks=1,
        orphan_segmentation=1,
        orphan_features=2,
        unexpected_file=True,
    )
    fixture = write_sfhq_part(storage, str(tmp_path / "p"), 8, faults=faults)
    scan = scan_part(SfhqPart(storage, fixture.folder, "1"))
    expected = {(n, LANDMARKS, "missing") for n in fixture.fault("missing_landmarks")}
    expected |= {(n, SEGMENTATIONS, "missing") for n in fixture.fault("missing_segmentation")}
    expected |= {(n, FEATURES, "missing") for n in fixture.fault("missing_features")}
    expected |= {(n, LANDMARKS, "orphan") for n in fixture.orphans["landmarks"]}
    expected |= {(n, SEGMENTATIONS, "orphan") for n in fixture.orphans["segmentations"]}
    expected |= {(n, FEATURES, "orphan") for n in fixture.orphans["pretrained_features"]}
    expected |= {("README.txt", IMAGES, "unexpected")}
    assert problem_set(scan.problems) == expected
    assert scan.problems.num_rows == len(expected) == 9
    orphan = fixture.orphans["landmarks"][0]
    row = next(r for r in scan.problems.to_pylist() if r["name"] == orphan)
    assert row["file"] == f"landmarks/{orphan}.npz" and row["problem"] == "no image of this name"
    missing = next(r for r in scan.problems.to_pylist() if r["kind"] == "missing")
    assert missing["file"] is None and missing["problem"].startswith("image has no")
    # the index holds every name seen anywhere; stages take only names with an image and their file
    assert scan.index.num_rows == 8 + 4
    counts = scan.counts()
    assert (counts[IMAGES], counts[LANDMARKS], counts[SEGMENTATIONS], counts[FEATURES]) == (8, 8, 7, 9)
    assert counts["problems_missing"] == 4 and counts["problems_orphan"] == 4
    assert counts["problems_unexpected"] == 1
    skipped = set(fixture.fault("missing_segmentation"))
    assert scan.names(SEGMENTATIONS) == [n for n in fixture.names if n not in skipped]
    assert counts["complete"] == 8 - 4


def test_a_missing_modality_folder_makes_every_image_miss_it(tmp_path):
    storage = Storage(str(tmp_path))
    fixture = write_sfhq_part(storage, str(tmp_path / "p"), 3)
    storage.rm(f"{fixture.folder}/pretrained_features")
    scan = scan_part(SfhqPart(storage, fixture.folder, "1"))
    assert problem_set(scan.problems) == {(n, FEATURES, "missing") for n in fixture.names}
    assert all("does not exist" in p for p in scan.problems["problem"].to_pylist())


def test_a_folder_without_images_and_unknown_parts_are_refused(tmp_path):
    storage = Storage(str(tmp_path))
    with pytest.raises(InputError, match=r"images: no \.jpg images"):
        scan_part(SfhqPart(storage, str(tmp_path / "empty"), "1"))
    with pytest.raises(UnknownPartitionError, match="'5'"):
        SfhqPart(storage, str(tmp_path), "5")
    assert PARTS == ("1", "2", "3", "4")


def test_s3_part_gives_the_same_index_and_statistics_as_a_local_one(tmp_path, s3_storage):
    faults = Faults(missing_landmarks=1, orphan_segmentation=1, bad_label_map=1)
    local = write_sfhq_part(Storage(str(tmp_path)), str(tmp_path / "p"), 5, faults=faults)
    remote = write_sfhq_part(s3_storage, s3_storage.uri("sources/sfhq/part1"), 5, faults=faults)
    scans = [
        scan_part(SfhqPart.at(local.folder, "1")),
        scan_part(SfhqPart.at(remote.folder, "1", s3_storage.s3)),
    ]
    assert scans[0].index.equals(scans[1].index)
    assert scans[0].problems.equals(scans[1].problems)
    landmarks = [read_part_landmarks(scan, threads=2) for scan in scans]
    maps = [read_part_segmentations(scan, threads=2) for scan in scans]
    assert landmarks[0].table.equals(landmarks[1].table) and landmarks[0].table.num_rows == 4
    assert maps[0].table.equals(maps[1].table) and maps[0].table.num_rows == 4
    assert problem_set(maps[1].problems) == {(local.fault("bad_label_map")[0], SEGMENTATIONS, "invalid")}
    truth = remote.images[remote.names[0]].map
    row = maps[1].table.to_pylist()[0]
    assert row["frac_skin"] == np.float32(truth.fractions[1])


def test_settings_locate_a_part_and_declare_the_assumed_index(tmp_path):
    settings = SfhqSettings()
    assert settings.part_uri("/data/sources", "3") == "/data/sources/sfhq/part3"
    assert settings.part_uri("s3://bucket/src/", "1") == "s3://bucket/src/sfhq/part1"
    custom = SfhqSettings(part_uri_template="{sources}/SFHQ_part{part}")
    assert custom.part_uri(str(tmp_path), "4") == f"{tmp_path}/SFHQ_part4"
    with pytest.raises(UnknownPartitionError):
        settings.part_uri("/x", "0")
    assert settings.landmark_index.assumed and "ASSUMED" in settings.landmark_index.note
