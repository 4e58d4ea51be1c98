"""The placement page (`/ui`) in headless Chromium against a real stack: models are shown
on the pods the admin API places them on, the page follows loads and unloads without a
reload, a model's detail opens from the page or from its URL, a bad model id is a 404
page, and a pasted admin token is sent as `Authorization: Bearer`."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from meshserve.cli.devstack import Stack

try:
    from playwright.sync_api import Page, expect
except ImportError as err:  # fail, never skip: say where it comes from
    raise ImportError("Playwright is not installed: it is pinned in requirements.lock (`make venv`)") from err

from tests.integration.conftest import wait_for

from .conftest import IRIS_URI, MNIST_URI, TOKEN

pytestmark = pytest.mark.integration

POLL = "interval=300"  # the page's poll period in ms (default 2000), to keep the tests short


def size_text(n: int) -> str:
    """The page's byte formatting (app.js `bytes`)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v, i = float(n), 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.0f} {units[i]}" if v >= 100 or i == 0 else f"{v:.1f} {units[i]}"


def model(stack: Stack, model_id: str) -> dict[str, Any]:
    response = stack.admin("GET", f"/v1/models/{model_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def loaded_on(stack: Stack, model_id: str, copies: int) -> list[str]:
    """The pods holding a loaded copy of `model_id`, once there are `copies` of them."""

    def check() -> list[str]:
        pods = sorted(c["pod"] for c in model(stack, model_id)["copies"] if c["state"] == "loaded")
        return pods if len(pods) == copies else []

    return wait_for(check, timeout=90, what=f"{copies} loaded copies of {model_id}")


def segment(page: Page, pod: str, model_id: str) -> Any:
    return page.locator(f'#pods .pod[data-pod="{pod}"] .seg.model[data-model="{model_id}"]')


@pytest.fixture(scope="module")
def placed(stack: Stack) -> dict[str, Any]:
    """Two models loaded through the admin API: `twice` with minCopies 2 (one copy on each
    pod) and `once` with a declared size; with the pods the API says hold them."""
    tag = uuid.uuid4().hex[:6]
    twice, once = f"digits-{tag}", f"iris-{tag}"
    assert stack.register(twice, storage_uri=MNIST_URI, minCopies=2, loadNow=True).status_code == 201
    assert stack.register(once, storage_uri=IRIS_URI, sizeBytes=30_000_000, loadNow=True).status_code == 201
    return {
        "twice": twice,
        "once": once,
        "twice_pods": loaded_on(stack, twice, 2),
        "once_pods": loaded_on(stack, once, 1),
    }


def test_each_model_is_drawn_on_the_pods_that_hold_it(stack: Stack, page: Page, placed: dict[str, Any]) -> None:
    twice, once = placed["twice"], placed["once"]
    assert len(set(placed["twice_pods"])) == 2
    page.goto(f"{stack.admin_url}/ui?{POLL}")
    expect(page.locator("#status")).to_contain_text("live")

    pods = [p["id"] for p in stack.admin("GET", "/v1/pods").json()["items"]]
    expect(page.locator("#pods .pod")).to_have_count(len(pods))
    for model_id, holders in ((twice, placed["twice_pods"]), (once, placed["once_pods"])):
        for pod in pods:
            expected = 1 if pod in holders else 0
            expect(segment(page, pod, model_id)).to_have_count(expected)
        for pod in holders:
            expect(segment(page, pod, model_id)).to_have_attribute("data-state", "loaded")
    # the bar holds the bytes the pod reserves for the model, as the API lists them
    for pod in stack.admin("GET", "/v1/pods").json()["items"]:
        for held in pod["models"]:
            if held["id"] in (twice, once):
                expect(segment(page, pod["id"], held["id"])).to_have_attribute("data-reserved", str(held["bytes"]))
        expect(page.locator(f'.pod[data-pod="{pod["id"]}"] .pod-capacity')).to_have_text(size_text(pod["capacityBytes"]))

    # declared vs measured bytes, as the API reports them
    sizes = model(stack, once)["sizes"]
    assert sizes["declared"] == 30_000_000 and sizes["measured"], sizes
    once_seg = segment(page, placed["once_pods"][0], once)
    expect(once_seg).to_contain_text(f"decl {size_text(sizes['declared'])}")
    expect(once_seg).to_contain_text(f"meas {size_text(sizes['measured'])}")

    # copies of one model are linked: both are marked x2, hovering one highlights both
    first, second = (segment(page, pod, twice) for pod in placed["twice_pods"])
    expect(first).to_contain_text("\u00d72")
    first.hover()
    expect(first).to_have_class(re.compile(r"\bhl\b"))
    expect(second).to_have_class(re.compile(r"\bhl\b"))
    expect(once_seg).not_to_have_class(re.compile(r"\bhl\b"))


def test_the_page_follows_a_load_and_an_unload_without_reloading(stack: Stack, page: Page) -> None:
    late = f"late-{uuid.uuid4().hex[:6]}"
    page.goto(f"{stack.admin_url}/ui?{POLL}")
    expect(page.locator("#status")).to_contain_text("live")
    page.evaluate("window.sameDocument = true")

    assert stack.register(late, storage_uri=IRIS_URI).status_code == 201
    waiting = page.locator(f'#unplaced [data-model="{late}"]')
    expect(waiting).to_contain_text("Standby")
    expect(page.locator(f'#pods .seg.model[data-model="{late}"]')).to_have_count(0)

    loaded = stack.admin("POST", f"/v1/models/{late}:load")
    assert loaded.status_code == 200, loaded.text
    (pod,) = loaded_on(stack, late, 1)
    expect(segment(page, pod, late)).to_have_attribute("data-state", "loaded")
    expect(page.locator(f'#pods .seg.model[data-model="{late}"]')).to_have_count(1)
    expect(waiting).to_have_count(0)
    expect(page.locator(f'#events .event[data-model="{late}"][data-kind="placed"][data-pod="{pod}"]')).to_have_count(1)

    assert stack.admin("POST", f"/v1/models/{late}:unload").status_code == 200
    expect(page.locator(f'#pods .seg.model[data-model="{late}"]')).to_have_count(0)
    expect(waiting).to_contain_text("Standby")
    assert page.evaluate("window.sameDocument") is True  # updated in place, never reloaded


def test_a_models_detail_opens_from_the_page_and_from_its_url(stack: Stack, page: Page, placed: dict[str, Any]) -> None:
    twice, once = placed["twice"], placed["once"]
    page.goto(f"{stack.admin_url}/ui?{POLL}")
    segment(page, placed["once_pods"][0], once).click()
    expect(page).to_have_url(re.compile(rf"/ui/models/{once}$"))
    expect(page.locator("#detail-id")).to_have_text(once)
    expect(page.locator("#detail-state")).to_have_text("Loaded")
    expect(page.locator("#detail-copies")).to_contain_text(placed["once_pods"][0])
    expect(page.locator("#events-title")).to_have_text(f"Events of {once}")
    expect(page.locator("#events .event").first).to_have_attribute("data-model", once)

    response = page.goto(f"{stack.admin_url}/ui/models/{twice}?{POLL}")
    assert response is not None and response.status == 200
    expect(page.locator("#detail-id")).to_have_text(twice)
    for pod in placed["twice_pods"]:
        expect(page.locator("#detail-copies")).to_contain_text(pod)
        expect(segment(page, pod, twice)).to_have_class(re.compile(r"\bselected\b"))

    page.locator("#detail .close").click()
    expect(page).to_have_url(re.compile(r"/ui$"))
    expect(page.locator("#detail")).to_be_hidden()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("no-such-model", id="unknown"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("..%2F..%2Fetc", id="slashes"),
        pytest.param("bad%00id", id="nul"),
        pytest.param("x:load", id="colon"),
        pytest.param("a" * 300, id="too-long"),
    ],
)
def test_a_bad_model_id_is_a_404_page(stack: Stack, page: Page, bad: str) -> None:
    response = page.goto(f"{stack.admin_url}/ui/models/{bad}")
    assert response is not None and response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    expect(page.locator("h1")).to_contain_text("404")
    expect(page.locator("#not-found-message")).to_contain_text("no")
    assert "Traceback" not in page.content()
    page.get_by_role("link", name="Back to the placement page").click()
    expect(page.locator("#status")).to_contain_text("live")


def test_a_pasted_token_is_sent_as_bearer_on_every_read(stack: Stack, page: Page) -> None:
    bearer = f"Bearer {TOKEN}"

    def pods_read(*, auth: str | None) -> Any:
        return lambda request: "/v1/pods" in request.url and request.headers.get("authorization") == auth

    def next_reads() -> list[Any]:
        """The requests of the next full poll (pods, models, events)."""
        with page.expect_request(lambda r: "/v1/pods" in r.url) as pods:
            pass
        with page.expect_request(lambda r: "/v1/models" in r.url) as models, page.expect_request(
            lambda r: "/v1/events" in r.url
        ) as events:
            pass
        return [pods.value, models.value, events.value]

    page.goto(f"{stack.admin_url}/ui?{POLL}")
    expect(page.locator("#status")).to_contain_text("live")
    assert [r.headers.get("authorization") for r in next_reads()] == [None] * 3

    page.fill("#token", TOKEN)
    with page.expect_request(pods_read(auth=bearer)):
        page.click("#token-save")
    assert [r.headers.get("authorization") for r in next_reads()] == [bearer] * 3
    expect(page.locator("#status")).to_contain_text("live")

    with page.expect_request(pods_read(auth=bearer)):
        page.reload()  # kept for the tab (sessionStorage)

    with page.expect_request(pods_read(auth=None)):
        page.click("#token-clear")
    assert [r.headers.get("authorization") for r in next_reads()] == [None] * 3
