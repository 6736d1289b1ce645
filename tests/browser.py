"""The Dagster UI in a real browser: the demo instance, ``dagster dev`` on it, and Debian's Chromium through Playwright.

Playwright's own browser download cannot reach its host here, so the tests drive the system Chromium
(``scripts/install_browser.sh`` installs Debian's ``chromium``) through ``executable_path``. Every wait is
Playwright's own (a selector, a URL, a state) with a deadline; nothing sleeps blindly.

The demo is the README's ``make demo`` (``dagster_project.demo.main``) run once per test process into a
temporary folder; :func:`demo_once` hands the same run to every test that asks for it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tests.cli_helpers import (
    BIN_DIR,
    REPO_ROOT,
    cli_env,
    free_port,
    start_process,
    stop_process_group,
    wait_for,
)
from tests.conftest import need_service

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path(os.environ.get("FACELAKE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO_ROOT / ".facelake" / "screenshots"
"""Where a person looks after a run: one PNG per page the UI test visited, overwritten by the next run."""
UI_TIMEOUT_MS = 60_000
"""Playwright's deadline for any one wait (a page, a selector) on a busy 2-core machine."""
SERVER_START_S = 180
VIEWPORT = {"width": 1600, "height": 1000}


# --- the demo, once per process --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRun:
    """A finished ``make demo`` in a temporary folder: its instance, config, model cache and printout."""

    base: Path
    home: Path
    config: Path
    models: Path
    printed: str

    def env(self) -> dict[str, str]:
        """What a CLI on this demo needs besides DAGSTER_HOME: the world's config and the model cache."""
        return {"FACELAKE_CONFIG": str(self.config), "FACELAKE_MODELS__CACHE_DIR": str(self.models)}


_DEMO: DemoRun | None = None


def demo_once(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``python -m dagster_project.demo --dir <tmp> --fresh`` the first time it is called in this process; the
    same run afterwards. The environment the demo sets (DAGSTER_HOME, FACELAKE_CONFIG) is restored."""
    global _DEMO
    if _DEMO is None:
        from dagster_project.demo import main

        base = tmp_path_factory.mktemp("demo")
        models = base / "models"
        printed = io.StringIO()
        with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(printed):
            env.setenv("FACELAKE_MODELS__CACHE_DIR", str(models))
            env.setenv("DAGSTER_HOME", str(base / "unused"))  # main sets both; the context restores them
            env.setenv("FACELAKE_CONFIG", str(base / "unused.yaml"))
            main(["--dir", str(base / "demo"), "--port", str(free_port()), "--fresh"])
        demo = base / "demo"
        _DEMO = DemoRun(demo, demo / "dagster_home", demo / "facelake.yaml", models, printed.getvalue())
    return _DEMO


# --- dagster dev ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def dagster_dev(demo: DemoRun, log: Path) -> Iterator[str]:
    """``make dev`` on the demo: ``dagster dev -w workspace.yaml`` (webserver, daemon, code server); yields the
    UI's URL once the code location is loaded. The daemon is what dequeues a run launched from the UI (the
    instance's default run coordinator queues runs)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN_DIR / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    server = start_process(command, cli_env(demo.home, **demo.env()), log)
    try:

        def loaded() -> bool:
            assert server.poll() is None, f"dagster dev exited:\n{log.read_text()[-4000:]}"
            try:
                answer = requests.post(f"{url}/graphql", json={"query": "{ assetNodes { id } }"}, timeout=5)
            except requests.ConnectionError:
                return False
            return answer.ok and bool((answer.json().get("data") or {}).get("assetNodes"))

        wait_for(loaded, SERVER_START_S, f"dagster dev on {url} to load the code location", interval_s=0.5)
        yield url
    finally:
        stop_process_group(server)


# --- the browser ----------------------------------------------------------------------------------------


def require_chromium() -> None:
    """Skip locally, fail under FACELAKE_REQUIRE_SERVICES=1, without Playwright or the system Chromium."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        need_service("Playwright", f"{exc} (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        need_service("Chromium", f"{CHROMIUM} is missing (run scripts/install_browser.sh)")


@contextlib.contextmanager
def chromium_page() -> Iterator[Page]:
    """A page in Debian's headless Chromium, every wait bounded by :data:`UI_TIMEOUT_MS`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.set_default_navigation_timeout(UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def fresh_screenshots() -> Path:
    """The screenshots folder, emptied of the previous run's PNGs."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS


def screenshot(page: Page, name: str) -> Path:
    """Save what the page shows now as ``<SCREENSHOTS>/<name>.png``."""
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


@contextlib.contextmanager
def screenshot_after(page: Page, name: str) -> Iterator[None]:
    """Screenshot the page when the block ends: ``<name>.png``, or ``<name>-FAILED.png`` if it raised."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, f"{name}-FAILED")
        raise
    screenshot(page, name)


def copy_log(log: Path) -> None:
    """Keep the server log beside the screenshots (a failed UI test is read from there)."""
    if log.is_file():
        shutil.copyfile(log, SCREENSHOTS / log.name)
