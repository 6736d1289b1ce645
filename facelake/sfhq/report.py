"""The exploratory report of an SFHQ part (HTML with embedded plots, Markdown for asset metadata) and the
``facelake sfhq describe`` text.

:func:`build_report` assembles the standard sections from a part's tables (counts and problems, the mean
landmark layout, class areas, derived measures, hairline coverage, examples per quantile of a measure);
callers append their own (e.g. text-search hits) with :meth:`Report.add`. :meth:`Report.to_html` is one
self-contained file (every plot a ``data:image/png;base64`` URI) that ``html.parser`` reads;
:meth:`Report.to_markdown` is the same for Dagster's ``MetadataValue.md``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from facelake.lake.plots import png_markdown
from facelake.lake.storage import Storage
from facelake.sfhq.layout import MODALITIES, PartScan, SfhqPart, concat_problems, problem_counts, scan_part
from facelake.sfhq.plots import (
    class_area_plot,
    contact_sheet,
    hairline_plot,
    hairline_summary,
    landmark_layout_plot,
    measures_plot,
    quantile_examples,
)
from facelake.sfhq.settings import LandmarkIndex


@dataclass
class Section:
    """One heading with an optional plot (PNG bytes) and text (shown preformatted)."""

    heading: str
    png: bytes | None = None
    text: str = ""
    slug: str = ""


@dataclass
class Report:
    """A titled list of sections."""

    title: str
    sections: list[Section] = field(default_factory=list)

    def add(self, heading: str, png: bytes | None = None, text: str = "", slug: str = "") -> Section:
        section = Section(heading, png, text, slug or _slug(heading))
        self.sections.append(section)
        return section

    def plots(self) -> dict[str, bytes]:
        """``<slug>.png`` -> PNG bytes of every section with a plot."""
        return {f"{s.slug}.png": s.png for s in self.sections if s.png is not None}

    def to_html(self) -> str:
        """One self-contained HTML document (plots embedded as base64 data URIs)."""
        title = html.escape(self.title)
        body = [f"<h1>{title}</h1>"]
        for section in self.sections:
            body.append(f'<section id="{html.escape(section.slug)}">')
            body.append(f"<h2>{html.escape(section.heading)}</h2>")
            if section.text:
                body.append(f"<pre>{html.escape(section.text)}</pre>")
            if section.png is not None:
                data = base64.b64encode(section.png).decode()
                alt = html.escape(section.heading, quote=True)
                body.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
            body.append("</section>")
        style = "body{font-family:sans-serif;max-width:1300px;margin:auto}img{max-width:100%}pre{background:#f4f4f4}"
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{title}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )

    def to_markdown(self) -> str:
        """The report as Markdown with inline images (Dagster ``MetadataValue.md``)."""
        parts = [f"# {self.title}"]
        for section in self.sections:
            parts.append(f"## {section.heading}")
            if section.text:
                parts.append("```\n" + section.text + "\n```")
            if section.png is not None:
                parts.append(png_markdown(section.png, section.heading))
        return "\n\n".join(parts) + "\n"


def _slug(heading: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in heading.lower()).strip("_") or "section"


# --- text --------------------------------------------------------------------------------------------------


def problems_text(problems: pa.Table, max_names: int = 10) -> str:
    """Problems by (modality, kind) with the first ``max_names`` names and reasons of each."""
    if not problems.num_rows:
        return "no problems"
    lines = []
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for row in problems.to_pylist():
        groups.setdefault((row["modality"], row["kind"]), []).append((row["name"], row["problem"]))
    for (modality, kind), entries in sorted(groups.items()):
        lines.append(f"{modality} {kind}: {len(entries)}")
        for name, problem in entries[:max_names]:
            lines.append(f"  {name}: {problem}")
        if len(entries) > max_names:
            lines.append(f"  ... and {len(entries) - max_names} more")
    return "\n".join(lines)


def describe(
    scan: PartScan,
    *,
    problems: Sequence[pa.Table] = (),
    counts: Mapping[str, int] | None = None,
    max_names: int = 10,
) -> str:
    """A part's counts and validation report as text: files per modality, complete names, problems by
    kind and by modality with example names. ``problems``: further stages' problem tables;
    ``counts``: further "label: number" lines (rows of committed tables)."""
    every = concat_problems([scan.problems, *problems])
    numbers = scan.counts()
    lines = [f"SFHQ part {scan.part.part}: {scan.part.folder}"]
    for modality, extension in MODALITIES.items():
        lines.append(f"  {modality + '/':22s} {numbers[modality]:>9,} {extension} files")
    lines.append(f"  {'names':22s} {numbers['names']:>9,} (in any folder)")
    lines.append(f"  {'complete':22s} {numbers['complete']:>9,} (image + landmarks + map + features)")
    for label, value in (counts or {}).items():
        lines.append(f"  {label:22s} {value:>9,}")
    kinds = problem_counts(every)
    status = "OK" if not kinds else "PROBLEMS: " + ", ".join(f"{k} {v:,}" for k, v in kinds.items())
    lines.append(f"validation: {status}")
    if every.num_rows:
        lines.append(problems_text(every, max_names))
    return "\n".join(lines)


def describe_part(storage: Storage, folder: str, part: str, *, max_names: int = 10) -> str:
    """Scan a part's folder and describe it (what ``facelake sfhq describe --part N`` prints)."""
    return describe(scan_part(SfhqPart(storage, folder, part)), max_names=max_names)


# --- the report --------------------------------------------------------------------------------------------


def build_report(
    scan: PartScan,
    *,
    landmarks: pa.Table | None = None,
    segmentations: pa.Table | None = None,
    problems: Sequence[pa.Table] = (),
    index: LandmarkIndex | None = None,
    measure: str = "hair_fraction",
    sample: int = 2000,
    seed: int = 0,
    per_quantile: int = 4,
    thumb: int = 128,
    threads: int | None = None,
) -> Report:
    """The standard sections for a part, from whichever of its tables are given."""
    index = index or LandmarkIndex()
    report = Report(f"SFHQ part {scan.part.part}")
    counts = {}
    if landmarks is not None:
        counts["landmark rows"] = landmarks.num_rows
        counts["valid landmark rows"] = sum(landmarks.column("valid").to_pylist())
    if segmentations is not None:
        counts["segmentation rows"] = segmentations.num_rows
    report.add("Counts and validation", text=describe(scan, problems=problems, counts=counts), slug="counts")
    if landmarks is not None:
        report.add(
            "Mean landmark layout",
            landmark_layout_plot(landmarks, index, sample, seed),
            text=index.label() + ("\n" + index.note if index.assumed else ""),
            slug="landmark_layout",
        )
    if segmentations is not None:
        report.add("Class areas", class_area_plot(segmentations), slug="class_areas")
        report.add("Derived measures", measures_plot(segmentations, landmarks), slug="measures")
        summary = hairline_summary(segmentations)
        text = (
            f"hairline found in the skin centre column: {summary.with_hairline}, no hair above the skin: "
            f"{summary.without_hairline}, no skin: {summary.without_skin}; coverage mean "
            f"{summary.coverage_mean:.3f}, quartiles {', '.join(f'{q:.3f}' for q in summary.coverage_quartiles)}"
        )
        report.add("Hairline coverage", hairline_plot(segmentations), text=text, slug="hairline")
    table = _measure_table(measure, landmarks, segmentations)
    if table is not None:
        examples = quantile_examples(table, measure, per_quantile=per_quantile)
        listing = "\n".join(
            f"q={e.quantile:g} ({measure}={e.value:.4g}): {', '.join(e.names)}" for e in examples
        )
        report.add(
            f"Examples per quantile of {measure}",
            contact_sheet(scan.part, examples, measure, thumb=thumb, threads=threads),
            text=listing,
            slug="quantile_examples",
        )
    return report


def _measure_table(
    measure: str, landmarks: pa.Table | None, segmentations: pa.Table | None
) -> pa.Table | None:
    for table in (segmentations, landmarks):
        if table is not None and measure in table.column_names:
            return table
    if segmentations is None and landmarks is None:
        return None
    raise KeyError(f"measure {measure!r} is not a column of the segmentation or landmarks table")
