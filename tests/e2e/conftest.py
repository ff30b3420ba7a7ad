"""Browser end-to-end fixtures: the studio launched in-process (local or public mode, its own temporary data folder,
a free port) and headless Debian chromium driven by Playwright. A screenshot of every test's page is saved under
``outputs/e2e-screenshots/`` (gitignored; CI keeps it as an artifact).

    def test_something(local_studio, page):       # one app per module and mode, a fresh page per test
        page.goto(local_studio.url)
        shot(page, "after-click")                 # extra screenshots: <module>-<test>-after-click.png

Add a module-scoped fixture with `start_studio` for other settings (a different pool, caps, admin password).
Without chromium (``/usr/bin/chromium``, ``$STUDIO_CHROMIUM``) every browser test is skipped, saying why.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from studio.hosting import Hosting
from studio.paths import REPO_ROOT
from tests.studio.ui import free_port

SCREENSHOTS = REPO_ROOT / "outputs" / "e2e-screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("STUDIO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Studio:
    url: str
    demo: object
    hosting: Hosting
    data_dir: Path


def start_studio(hosting: Hosting, mp: pytest.MonkeyPatch, **env: str) -> Studio:
    """Build and launch the full app for ``hosting`` with a fresh data folder (set in ``mp``, which the caller
    undoes after ``demo.close()``) and the environment variables ``env``."""
    from studio.loading import ModelCache
    from studio.ui import build_app, launch

    data = Path(tempfile.mkdtemp(prefix="studio-e2e-"))
    mp.setenv("STUDIO_DATA_DIR", str(data))
    for key, value in env.items():
        mp.setenv(key, value)
    demo = build_app(ModelCache(), hosting=hosting)
    _, url, _ = launch(demo, hosting, prevent_thread_lock=True, server_port=free_port(), quiet=True,
                       server_name="127.0.0.1")
    return Studio(url, demo, hosting, data)


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("chromium not found (install Debian's chromium: apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)  # a fresh profile per launch
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh page (its own cookies) whose final state is saved as a screenshot after the test, pass or fail."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.shot_prefix = f"{request.module.__name__.split('.')[-1]}-{request.node.name}"
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(SCREENSHOTS / f"{page.shot_prefix}.png"), full_page=True)
    finally:
        context.close()


def shot(page, name: str) -> Path:
    """An intermediate screenshot ``<module>-<test>-<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{page.shot_prefix}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _studio_fixture(hosting_factory, **env):
    @pytest.fixture(scope="module")
    def fixture(browser):  # needs the browser: no app is started when the browser tests are skipped
        mp = pytest.MonkeyPatch()
        studio = start_studio(hosting_factory(), mp, **env)
        yield studio
        studio.demo.close()
        mp.undo()  # the data folder stays in the temp dir: the Train tab's job watcher may still look at it

    return fixture


FAST_ARENA = {"STUDIO_ARENA_SETTINGS": '{"steps": 4}'}  # demo-family battles in about a second on a CPU
local_studio = _studio_fixture(lambda: Hosting(mode="local"), **FAST_ARENA)
public_studio = _studio_fixture(lambda: Hosting.from_env(True, env={"STUDIO_MIN_VIEW_S": "1"}), **FAST_ARENA)
