"""The Dagster UI as a person uses it after ``make demo`` and ``make dev``, in a real (headless) Chromium.

On the demo's instance, ``dagster dev -w workspace.yaml`` (what ``make dev`` runs) serves the UI; Playwright drives
Debian's Chromium through it: the first-visit community dialog is skipped (and stays skipped: the instance
records it), the global and per-asset lineage show the four dataset groups and part 00000's neighbours,
``laion_face_images`` has 32 partitions of which ``00000`` alone is materialized with the download's metadata, a
materialization's NN-similarity plot renders as an image, the ``success_rate`` check shows its result, and one
partition of ``laion_face_identity_clusters`` launched from the UI's Materialize dialog runs to success (the
daemon dequeues it, the multiprocess executor runs it) with its own plot. Screenshots of every page go to
``.facelake/screenshots/`` (with the ``dagster dev`` log).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from tests.browser import (
    UI_TIMEOUT_MS,
    DemoRun,
    chromium_page,
    copy_log,
    dagster_dev,
    demo_once,
    fresh_screenshots,
    require_chromium,
    screenshot_after,
)
from tests.cli_helpers import PART, materialization_records, wait_for

pytestmark = pytest.mark.slow

GROUPS = ("laion_face", "laion_face_models", "celebahq", "hyperface")
LAUNCHED = "laion_face_identity_clusters"
"""The asset whose partition 00000 the test launches from the UI: a real step on the demo's embeddings."""
RUN_DEADLINE_MS = 300_000
"""From the click on 'Launch 1 run' to the run's final status on a busy 2-core machine."""
PLOT_ROW = "nn_similarity_plot"
NEIGHBOURS = ("laion_face_meta", "laion_face_optout", "laion_face_detected", "laion_face_report")
"""laion_face_images' upstream (metadata, opt-out list) and downstream (detections, the report) assets."""


@dataclass
class Ui:
    """The demo, the UI's URL and one browser page on it, past the first-visit dialog."""

    demo: DemoRun
    url: str
    page: object
    dialog_text: str
    seen_before: bool

    def open(self, path: str) -> None:
        self.page.goto(self.url + path, wait_until="domcontentloaded")


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[Ui]:
    require_chromium()
    demo = demo_once(tmp_path_factory)
    fresh_screenshots()
    log = tmp_path_factory.mktemp("ui") / "dagster-dev.log"
    seen = demo.home / ".nux" / "nux.yaml"
    seen_before = seen.exists()
    try:
        with dagster_dev(demo, log) as url, chromium_page() as page:
            page.goto(url + "/", wait_until="domcontentloaded")
            with screenshot_after(page, "01-community-dialog"):
                dialog = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
                dialog.wait_for()
                dialog_text = dialog.inner_text()
            dialog.get_by_role("button", name="Skip").click()
            dialog.wait_for(state="detached")
            wait_for(seen.exists, 30, "the UI to record the community dialog as seen")
            yield Ui(demo, url, page, dialog_text, seen_before)
    finally:
        copy_log(log)


@pytest.fixture(scope="module")
def demo_part_run(ui) -> str:
    """The run id of the demo's ``laion_face_part_job`` for part 00000 (it materialized laion_face_images)."""
    with DagsterInstance.from_config(str(ui.demo.home)) as instance:
        (*_, first) = materialization_records(instance, "laion_face_images", PART)
    return first.run_id


def shown_as(name: str, text: str) -> bool:
    """Whether a graph node showing ``text`` is the asset ``name``: zoomed out to fit, the graph draws long
    names middle-truncated (``laion_fa…_detected``), and the full name is then nowhere in the page."""
    if "…" not in text:
        return text == name
    head, tail = text.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name)


def plot_image(page, row_label: str):
    """Open the ``[Show Markdown]`` of the metadata row ``row_label``; the <img> in the dialog, once loaded."""
    row = page.locator("tr").filter(has=page.get_by_text(row_label, exact=True)).first
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text=row_label)
    image = dialog.locator("img").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    return dialog, image


def assert_png_plot(image) -> None:
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,"), src[:60]
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > 100 and height > 100, (width, height)  # a decoded plot, not a broken-image icon


def test_the_first_visit_dialog_is_skipped_and_stays_skipped(ui):
    assert not ui.seen_before, "a fresh demo instance has never shown the dialog"
    assert "Join the Dagster community" in ui.dialog_text and "Skip" in ui.dialog_text
    page = ui.page
    with screenshot_after(page, "02-overview"):
        asks = page.expect_response(lambda r: "/graphql?op=ShouldShowNux" in r.url)
        with asks as answer:  # the UI asks the instance whether to show the dialog: now it must not
            ui.open("/")
        assert answer.value.json()["data"]["shouldShowNux"] is False
        page.get_by_role("link", name=re.compile("Lineage")).first.wait_for()
        assert page.get_by_role("dialog").filter(has_text="Join the Dagster community").count() == 0


def test_the_global_asset_lineage_shows_every_dataset_group(ui):
    page = ui.page
    ui.open("/")
    with screenshot_after(page, "03-global-lineage"):
        page.locator("a[class*=MainNavigation_link][href='/asset-groups']").click()
        page.wait_for_url("**/asset-groups")
        page.get_by_text("Global asset lineage").wait_for()
        for group in GROUPS:
            page.get_by_text(group, exact=True).first.wait_for()


def test_an_assets_lineage_shows_its_upstream_and_downstream(ui):
    page = ui.page
    ui.open("/assets/laion_face_images?view=lineage")
    with screenshot_after(page, "04-asset-lineage"):
        names = page.locator("[class*='AssetNode_assetName']")
        names.first.wait_for()

        def every_neighbour_drawn() -> bool:
            shown = names.all_inner_texts()
            return all(any(shown_as(name, text) for text in shown) for name in NEIGHBOURS)

        wait_for(every_neighbour_drawn, UI_TIMEOUT_MS / 1000, f"the lineage to draw {NEIGHBOURS}", 0.25)
        for group in ("laion_face", "laion_face_models"):
            page.get_by_text(group, exact=True).first.wait_for()


def test_the_partitions_of_laion_face_images(ui, demo_part_run):
    page = ui.page
    ui.open(f"/assets/laion_face_images?view=partitions&partition={PART}")
    with screenshot_after(page, "05-partitions"):
        page.get_by_text("32 Partitions Selected").wait_for()
        page.get_by_text("Materialized (1)").wait_for()
        page.get_by_text("Missing (31)").wait_for()
        detail = page.get_by_role("link", name=demo_part_run[:8])
        detail.wait_for()
        assert detail.get_attribute("href").startswith(f"/runs/{demo_part_run}")
        row = page.locator("tr").filter(has=page.get_by_text("success_rate", exact=True)).first
        assert row.inner_text().split()[-1].startswith("0.916129")  # 142 of 155 eligible
        counts = page.locator("tr").filter(has=page.get_by_text("counts_by_status", exact=True)).first
        assert '"success": 142' in counts.inner_text()


def test_a_materializations_plot_renders(ui):
    page = ui.page
    ui.open("/assets/celebahq_identity_clusters?view=events")
    with screenshot_after(page, "06-metadata-plot"):
        dialog, image = plot_image(page, PLOT_ROW)
        assert_png_plot(image)
        assert image.get_attribute("alt")
    dialog.get_by_role("button", name="Close").click()
    dialog.wait_for(state="detached")


def test_an_asset_check_result(ui):
    page = ui.page
    ui.open("/assets/laion_face_images?view=checks")
    with screenshot_after(page, "07-asset-check"):
        page.get_by_text("Evaluation result").wait_for()
        page.get_by_text("Passed", exact=True).wait_for()
        assert page.get_by_text("success_rate", exact=True).count() >= 2  # the check and its metadata row
        page.get_by_text("0.9161290322580645", exact=True).first.wait_for()
        page.get_by_text("threshold", exact=True).first.wait_for()


def test_launch_one_partition_from_the_ui_and_see_it_succeed(ui):
    page = ui.page
    ui.open(f"/assets/{LAUNCHED}?view=partitions")
    page.get_by_role("button", name="Materialize…").click()
    launchpad = page.locator(".dagster-dialog").filter(has_text=f"Launch runs to materialize {LAUNCHED}")
    launchpad.wait_for()
    launchpad.get_by_text("Select a partition or create one").click()
    picker = page.locator(".dagster-popover")
    picker.get_by_placeholder("Filter partitions").fill(PART)
    picker.locator("span", has_text=PART).first.click()
    launchpad.get_by_text(f"Launch runs to materialize {LAUNCHED}").click()  # closes the picker
    picker.wait_for(state="detached")
    launch = launchpad.get_by_role("button", name="Launch 1 run")
    with screenshot_after(page, "08-launch-dialog"):
        launch.wait_for()
    launch.click()
    view = page.get_by_role("link", name="View", exact=True)  # the "Launched run …" toast
    run_id = view.get_attribute("href").rsplit("/", 1)[-1]
    view.click()
    page.wait_for_url(f"**/runs/{run_id}")
    status = page.locator(".BaseTag").filter(has_text=re.compile(r"^(Success|Failure|Canceled)$")).first
    with screenshot_after(page, "09-run"):
        status.wait_for(timeout=RUN_DEADLINE_MS)
        assert status.inner_text().strip() == "Success"
        page.get_by_text("RUN_SUCCESS").first.wait_for()

    with DagsterInstance.from_config(str(ui.demo.home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/from_ui"] == "true" and run.tags["dagster/partition"] == PART
        (record, *_) = materialization_records(instance, LAUNCHED, PART)
        assert record.run_id == run_id
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey(LAUNCHED), "members_near_centroid"), limit=10
        )
        (check,) = [r for r in history if r.run_id == run_id]
        assert check.status == AssetCheckExecutionRecordStatus.SUCCEEDED

    ui.open(f"/assets/{LAUNCHED}?view=partitions&partition={PART}")
    with screenshot_after(page, "10-launched-partition-plot"):
        page.get_by_text("Materialized (1)").wait_for()
        _, image = plot_image(page, PLOT_ROW)
        assert_png_plot(image)
