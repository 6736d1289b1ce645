"""SFHQ report: the numbers behind each plot against the fixture, the self-contained HTML (parsed, every plot a
decodable PNG), the Markdown for asset metadata, and the ``describe`` text."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from facelake.lake.storage import Storage
from facelake.sfhq.artifacts import PROBLEMS_FILE, artifact, write_tables
from facelake.sfhq.features import part_features_matrix
from facelake.sfhq.landmarks import read_part_landmarks
from facelake.sfhq.layout import SfhqPart, scan_part
from facelake.sfhq.plots import (
    contact_sheet,
    hairline_summary,
    mean_landmark_layout,
    quantile_examples,
)
from facelake.sfhq.report import build_report, describe, describe_part
from facelake.sfhq.segmentation import read_part_segmentations
from synthetic.sfhq import FEATURE_KEY, Faults, write_sfhq_part


@pytest.fixture(scope="module")
def part(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sfhq")
    faults = Faults(nan_landmarks=1, bad_label_map=1, missing_features=1, orphan_landmarks=1)
    fixture = write_sfhq_part(Storage(str(folder)), str(folder / "part1"), 14, faults=faults)
    scan = scan_part(SfhqPart(fixture.storage, fixture.folder, "1"))
    landmarks = read_part_landmarks(scan)
    maps = read_part_segmentations(scan)
    features = part_features_matrix(scan, FEATURE_KEY)
    return fixture, scan, landmarks, maps, features


def test_mean_landmark_layout_is_the_mean_of_box_normalised_valid_faces(part):
    fixture, _, landmarks, _, _ = part
    valid = [t for t in fixture.images.values() if t.landmark_valid]
    expected = np.mean(
        [(t.points - t.landmark_box[:2]) / (t.landmark_box[2:] - t.landmark_box[:2]) for t in valid], axis=0
    )
    layout, faces = mean_landmark_layout(landmarks.table)
    assert faces == len(valid) == 13
    np.testing.assert_allclose(layout, expected, rtol=1e-5, atol=1e-6)
    sampled, count = mean_landmark_layout(landmarks.table, sample=5, seed=1)
    assert count == 5 and sampled.shape == (110, 2) and not np.allclose(sampled, layout)


def test_hairline_summary_counts_the_fixture_cases(part):
    fixture, _, _, maps, _ = part
    truths = [fixture.images[n].map for n in maps.table["name"].to_pylist()]
    summary = hairline_summary(maps.table)
    assert summary.with_hairline == sum(t.hairline_y is not None for t in truths)
    assert summary.without_hairline == sum(t.hairline_y is None for t in truths) >= 1  # the bald ones
    assert summary.without_skin == 0
    coverage = np.array([t.hairline_coverage for t in truths])
    assert summary.coverage_mean == pytest.approx(coverage.mean(), rel=1e-6)
    assert summary.coverage_quartiles == pytest.approx(
        tuple(np.quantile(coverage, (0.25, 0.5, 0.75))), rel=1e-6
    )


def test_quantile_examples_pick_the_nearest_names_once():
    table = pa.table({"name": list("abcdef"), "m": [0.1, 0.5, 0.2, 0.9, None, 0.3]})
    examples = quantile_examples(table, "m", quantiles=(0.0, 0.5, 1.0), per_quantile=2)
    assert [(e.quantile, e.value) for e in examples] == [(0.0, 0.1), (0.5, 0.3), (1.0, 0.9)]
    assert [e.names for e in examples] == [["a", "c"], ["f", "b"], ["d"]]
    with pytest.raises(KeyError, match="no column 'x'"):
        quantile_examples(table, "x")


class Collector(HTMLParser):
    """The report's images (src), h2 headings and pre blocks, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.pre: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._tag == "h2":
            self.headings.append(data)
        elif self._tag == "pre":
            self.pre.append(data)

    def handle_endtag(self, tag):
        self._tag = None


def test_the_html_report_is_self_contained_and_holds_every_plot(part):
    fixture, scan, landmarks, maps, features = part
    report = build_report(
        scan,
        landmarks=landmarks.table,
        segmentations=maps.table,
        problems=[landmarks.problems, maps.problems, features.problems],
        per_quantile=2,
        thumb=64,
    )
    report.add("Text search", text="probe 'a smiling person': no text encoder for CLIP_ViTL_14@336")
    document = report.to_html()
    parser = Collector()
    parser.feed(document)
    parser.close()
    assert parser.headings == [
        "Counts and validation",
        "Mean landmark layout",
        "Class areas",
        "Derived measures",
        "Hairline coverage",
        "Examples per quantile of hair_fraction",
        "Text search",
    ]
    plots = report.plots()
    assert sorted(plots) == sorted(
        f"{slug}.png"
        for slug in ("landmark_layout", "class_areas", "measures", "hairline", "quantile_examples")
    )
    assert len(parser.images) == len(plots) == 5
    for src, png in zip(parser.images, plots.values(), strict=True):
        assert src.startswith("data:image/png;base64,")  # nothing outside the file
        data = base64.b64decode(src.split(",", 1)[1])
        assert data == png
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.size[0] > 300
    text = "\n".join(parser.pre)
    assert "ASSUMED landmark order" in text
    assert "validation: PROBLEMS: invalid 2, missing 1, orphan 1" in text
    assert f"  {fixture.fault('bad_label_map')[0]}: labels outside 0-18: 25 (4096 px)" in text
    assert "  landmark rows                 14" in text and "  valid landmark rows           13" in text
    markdown = report.to_markdown()
    assert markdown.count("data:image/png;base64,") == 5 and markdown.startswith("# SFHQ part 1")


def test_describe_gives_counts_and_every_problem_by_name(part, tmp_path):
    fixture, scan, landmarks, maps, _ = part
    text = describe(scan, problems=[landmarks.problems, maps.problems], max_names=1)
    (nan_name,) = fixture.fault("nan_landmarks")
    lines = text.splitlines()
    assert lines[0] == f"SFHQ part 1: {fixture.folder}"
    assert lines[1:7] == [
        "  images/                       14 .jpg files",
        "  landmarks/                    15 .npz files",
        "  segmentations/                14 .png files",
        "  pretrained_features/          13 .pickle files",
        "  names                         15 (in any folder)",
        "  complete                      13 (image + landmarks + map + features)",
    ]
    assert "validation: PROBLEMS: invalid 2, missing 1, orphan 1" in lines
    assert f"  {nan_name}: non-finite point(s) [70]" in lines
    assert describe_part(fixture.storage, fixture.folder, "1").startswith(lines[0])
    clean = write_sfhq_part(Storage(str(tmp_path)), str(tmp_path / "p"), 2, part="3")
    assert describe_part(clean.storage, clean.folder, "3").splitlines()[-1] == "validation: OK"


def test_contact_sheet_survives_an_unreadable_image(part, tmp_path):
    maps = part[3]
    examples = quantile_examples(maps.table, "roll_deg", per_quantile=1)
    storage = Storage(str(tmp_path))
    copy = SfhqPart(storage, str(tmp_path / "p"), "1")
    for example in examples:
        for name in example.names:
            storage.write_bytes(copy.uri("images", name), b"not a jpeg")
    png = contact_sheet(copy, examples, "roll_deg", thumb=48)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"


def test_write_tables_commits_a_stage_with_problem_counts(part, tmp_path):
    from facelake.lake.commit import materialize_partition

    _, _, landmarks, _, _ = part
    lake = Storage(str(tmp_path / "lake"))
    target = artifact(lake, "landmarks", "1")

    def write(attempt):
        tables = {"landmarks.parquet": landmarks.table, PROBLEMS_FILE: landmarks.problems}
        return write_tables(attempt, tables, extra={"landmark_index_assumed": True})

    outcome = materialize_partition(target, {"part": "1"}, "v1", "test", write)
    manifest = outcome.manifest
    assert manifest.rows == landmarks.table.num_rows == 14
    assert manifest.extra == {"landmark_index_assumed": True, "problems": {"invalid": 1}, "problem_rows": 1}
    assert target.prefix == lake.uri("sfhq", "landmarks", "1")
    assert sorted(f.path.rsplit("/", 1)[-1] for f in manifest.files) == ["landmarks.parquet", PROBLEMS_FILE]
