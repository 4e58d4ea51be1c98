"""`meshserve apply --wait` and `meshserve logs <pod>` for the pods the controller runs in local
mode: a stack with the controller (MESHSERVE_CONTROLLER_MODE=local) and no pods of its own;
the controller starts the runtime's one pod (podsPerRuntime: 1) when the InferenceService
comes. Nothing waits for a fixed time."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from meshserve.cli.devstack import Stack, StackConfig
from meshserve.cli.main import main as cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "models"
ISVC_YAML = ROOT / "examples" / "isvc" / "example-mlserver-sklearn-mnist-isvc.yaml"
RUNTIME_YAML = ROOT / "examples" / "isvc" / "mlserver-1.x-servingruntime.yaml"
ISVC = "example-sklearn-mnist-svm"
ONE_POD = """apiVersion: v1
kind: ConfigMap
metadata:
  name: model-serving-config
data:
  config.yaml: |
    podsPerRuntime: 1
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(StackConfig.from_env(tmp_path_factory.mktemp("cli-controller"), pods=0, isolate=True))
    try:
        s.start(controller=True)
        s.upload_examples(EXAMPLES)
        yield s
    finally:
        s.stop()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_apply_waits_until_the_inference_service_is_loaded_then_its_pod_has_logs(
    stack: Stack, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ONE_POD)
    rc, out, err = run_cli("apply", "-f", str(config), "-f", str(RUNTIME_YAML), "--admin", stack.admin_url)
    assert rc == 0, err
    rc, out, err = run_cli("apply", "-f", str(ISVC_YAML), "--wait", "--timeout", "240", "--admin", stack.admin_url)
    assert rc == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == f"inferenceservice.serving.kserve.io/{ISVC} created"
    progress = lines[1:]
    assert progress and all(line.startswith(f"{ISVC}: ") for line in progress), lines
    assert progress[-1].startswith(f"{ISVC}: Loaded model ") and progress[-1].endswith("s)"), progress

    pods = [p["id"] for p in stack.admin("GET", "/v1/pods").json()["items"]]
    assert len(pods) == 1
    rc, out, err = run_cli("logs", pods[0], "--local-root", str(stack.root), "--admin", stack.admin_url)
    assert rc == 0, err
    assert any(line.startswith("[mlserver] ") for line in out.splitlines()), out[-2000:]
    puller = [line for line in out.splitlines() if line.startswith("[puller] ")]
    assert any(ISVC in line for line in puller), puller[-20:]   # the puller loaded the isvc's model

    rc, out, err = run_cli("logs", "pod-x", "--local-root", str(stack.root), "--admin", stack.admin_url)
    assert rc == 1 and f"known pods: {pods[0]}" in err, err
