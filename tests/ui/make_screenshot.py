"""Make docs/img/placement-page.png: the placement page of a small real stack.

    .venv/bin/python -m tests.ui.make_screenshot [--out docs/img/placement-page.png]

Starts a stack (three MLServer pods of 256 MiB), registers and loads a few example models
through the admin API, waits until they are placed, and saves the page with the same
Chromium the tests use (scripts/chromium.sh); `--detail-out` also saves one model's
detail view, where its two copies are highlighted.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from meshserve.cli.devstack import EXAMPLE_BUCKET, Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
BUCKET = f"s3://{EXAMPLE_BUCKET}"
MODELS = [
    # id, storage, format, extra registration fields
    ("mnist-svm", f"{BUCKET}/sklearn/mnist-svm.joblib", "sklearn", {"minCopies": 2, "sizeBytes": 6_000_000}),
    ("iris-logreg", f"{BUCKET}/sklearn/iris-logreg.joblib", "sklearn", {"sizeBytes": 8_000_000}),
    ("mushroom-xgb", f"{BUCKET}/xgboost/mushroom.json", "xgboost", {}),
    ("mushroom-lgbm", f"{BUCKET}/lightgbm/mushroom.bst", "lightgbm", {"sizeBytes": 5_000_000}),
    ("fraud-detector", f"{BUCKET}/sklearn/fraud-v2.joblib", "sklearn", {}),  # no such object: fails
]
STANDBY = ("churn-predictor", f"{BUCKET}/sklearn/iris-logreg.joblib", "sklearn")


def wait(check, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "placement-page.png")
    parser.add_argument("--detail-out", type=Path, help="also save mnist-svm's detail view here")
    args = parser.parse_args()
    chromium = subprocess.run(["bash", str(ROOT / "scripts" / "chromium.sh")], check=True, capture_output=True, text=True)
    executable = chromium.stdout.strip().splitlines()[-1]

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="placement-shot-") as scratch:
        stack = Stack(StackConfig.from_env(Path(scratch), pods=3, isolate=True, pod_capacity_bytes=256 * 1024 * 1024))
        stack.start()
        try:
            stack.upload_examples(ROOT / "examples" / "models")
            for model_id, uri, fmt, extra in MODELS:
                stack.register(model_id, storage_uri=uri, format=fmt, loadNow=True, **extra)
            stack.register(STANDBY[0], storage_uri=STANDBY[1], format=STANDBY[2])

            def placed() -> bool:
                models = {m["id"]: m for m in stack.admin("GET", "/v1/models").json()["items"]}
                loaded = all(
                    sum(c["state"] == "loaded" for c in models[m]["copies"]) >= extra.get("minCopies", 1)
                    for m, _, _, extra in MODELS[:-1]
                )
                return loaded and models["fraud-detector"]["state"] == "FailedToLoad"

            wait(placed, "the models to be placed")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=executable,
                    args=["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-gpu"],
                )
                page = browser.new_page(viewport={"width": 1400, "height": 720}, device_scale_factor=1)
                page.goto(f"{stack.admin_url}/ui?interval=500")
                page.wait_for_selector('#pods .seg.model[data-model="mnist-svm"]')
                page.wait_for_selector('#unplaced [data-model="fraud-detector"]')
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=False)
                if args.detail_out:
                    page.goto(f"{stack.admin_url}/ui/models/mnist-svm?interval=500")
                    page.wait_for_selector("#detail-id")
                    page.screenshot(path=str(args.detail_out), full_page=False)
                browser.close()
        finally:
            stack.stop()
    print(args.out)


if __name__ == "__main__":
    main()
