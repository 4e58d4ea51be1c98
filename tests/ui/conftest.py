"""The placement page in a real headless browser: Debian's Chromium (unpacked without root
by scripts/chromium.sh) driven by Playwright, against a whole stack of real processes
(Redis, Postgres, S3, scheduler, router and two MLServer pods, as tests/integration does).

Nothing here is skipped: without Playwright or a browser the tests fail and say how to
get them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "models"
CHROMIUM_SCRIPT = ROOT / "scripts" / "chromium.sh"
TOKEN = "ui-admin-token"
MNIST_URI = f"s3://{EXAMPLE_BUCKET}/sklearn/mnist-svm.joblib"
IRIS_URI = f"s3://{EXAMPLE_BUCKET}/sklearn/iris-logreg.joblib"
BROWSER_ARGS = [
    # this machine's network is closed: no background connections, no component updates
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-gpu",
    "--no-first-run",
]


def chromium_path() -> str:
    """The browser to drive: MESHSERVE_CHROMIUM if set, else what scripts/chromium.sh
    unpacks (it does nothing when the browser is already there)."""
    given = os.environ.get("MESHSERVE_CHROMIUM")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"MESHSERVE_CHROMIUM={given} is not an executable")
        return given
    try:
        done = subprocess.run(["bash", str(CHROMIUM_SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/chromium.sh took over 10 minutes to unpack Debian's chromium")
    if done.returncode != 0:
        pytest.fail(
            "no headless Chromium for the placement page tests: scripts/chromium.sh failed "
            f"(it downloads Debian's chromium-headless-shell with apt-get, no root needed):\n{done.stderr[-3000:]}"
        )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium under Playwright's sync API, for one module at a time: while it runs,
    Playwright's own event loop is the thread's running loop, so a later async test of the
    same session (pytest-asyncio) could not start its loop; closing it at the end of the
    module clears that."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: it is pinned in requirements.lock (`make venv` installs it)")
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two runtime pods; an admin token is configured (mutations need it, reads do not).
    Stopped after the module, so it does not run beside tests/integration's stack."""
    if not (EXAMPLES / "sklearn" / "mnist-svm.joblib").exists():
        pytest.fail("example models missing: run `make examples` (make test does it)")
    s = Stack(StackConfig.from_env(tmp_path_factory.mktemp("ui-stack"), pods=2, isolate=True, admin_token=TOKEN))
    s.start()
    try:
        s.upload_examples(EXAMPLES)
        yield s
    finally:
        s.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context and page; console errors fail the test, and a screenshot of
    a failed test is kept in its tmp_path."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda err: errors.append(str(err)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "404" not in msg.text else None)
    yield p
    if getattr(request.node, "rep_call_failed", False):
        p.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
    context.close()
    assert not errors, f"the page logged errors: {errors}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
        stacks = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Stack)]
        for proc in stacks[0].group.procs if stacks else []:
            report.sections.append((f"log of {proc.name}", proc.tail(30)))


