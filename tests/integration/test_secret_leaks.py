"""No secret leaks anywhere a run leaves text: a whole stack (scheduler, router, local controller,
a runtime pod it starts) runs with an admin token and a storage-config Secret whose values are
unique strings, loads a model through that key, fails a load through another one, answers an
inference and refuses a wrong token; then every log line of every process, every answer of the
admin API's read endpoints, the CLI's output and every metrics page are searched for those
strings, raw and base64-encoded. The storage-config files the pods read (they must hold the key)
and the database's own files are the only places a secret may be.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshserve.cli.devstack import Stack, StackConfig
from meshserve.cli.procs import free_port

from .conftest import EXAMPLES, wait_for
from .test_controller_local import run_cli
from .test_storage_local_secret import RUNTIME_YAML, failed, isvc, loaded, pods, secret

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex
TOKEN = f"admin-token-{RUN}"
WRONG_TOKEN = f"wrong-token-{RUN[::-1]}"
SECRET_KEY = f"s3-secret-{RUN}"
MISSING_SECRET_KEY = f"s3-secret-missing-{RUN[::-1]}"
SECRETS = (TOKEN, WRONG_TOKEN, SECRET_KEY, MISSING_SECRET_KEY)
BUCKET = "leak-check"


def forms(value: str) -> list[str]:
    """The value as written, and base64 of it (a Secret's `data` carries it so)."""
    return [value, base64.b64encode(value.encode()).decode().rstrip("=")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("secret-leaks"))
    metrics = free_port()
    config = StackConfig.from_env(root, pods=0, isolate=True, admin_token=TOKEN, extra_env={
        "MESHSERVE_SCHEDULER_POD_TIMEOUT_SECONDS": "5", "MESHSERVE_SCHEDULER_METRICS_PORT": str(metrics)})
    stack = Stack(config)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MESHSERVE_ADMIN_TOKEN", TOKEN)   # the CLI's token
        try:
            stack.start_infra()
            stack.migrate()
            stack.start_scheduler()
            stack.start_router()
            stack.upload_examples(EXAMPLES)
            s3 = stack.s3_client()
            s3.create_bucket(Bucket=BUCKET)
            s3.upload_file(str(EXAMPLES / "sklearn" / "mnist-svm.joblib"), BUCKET, "m/mnist-svm.joblib")
            stack.start_controller()
            stack.scheduler_metrics = f"http://127.0.0.1:{metrics}/metrics"  # type: ignore[attr-defined]
            yield stack
        finally:
            stack.stop()


def key(secret_value: str, bucket: str, endpoint: str) -> dict[str, str]:
    return {"type": "s3", "access_key_id": f"AKIA{RUN[:16].upper()}", "secret_access_key": secret_value,
            "endpoint_url": endpoint, "bucket": bucket, "region": "us-east-1"}


def apply(stack: Stack, *docs: object) -> str:
    rc, out, err = run_cli("apply", "-f", "-", "--admin", stack.admin_url, stdin=yaml.safe_dump_all(docs))
    assert rc == 0, err
    return out + err


def test_no_secret_reaches_logs_answers_or_metrics(stack: Stack) -> None:
    said = [apply(stack, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-serving-config"},
                   "data": {"config.yaml": "podsPerRuntime: 1\n"}})]
    rc, out, err = run_cli("apply", "-f", str(RUNTIME_YAML), "--admin", stack.admin_url)
    assert rc == 0, err
    said.append(out + err)
    said.append(apply(stack, secret(leakS3=key(SECRET_KEY, BUCKET, stack.s3_endpoint),
                             leakMissing=key(MISSING_SECRET_KEY, "no-such-bucket", stack.s3_endpoint))))
    said.append(apply(stack, isvc("leak-good", uri=f"s3://{BUCKET}/m/mnist-svm.joblib", key="leakS3"),
                      isvc("leak-bad", uri="s3://no-such-bucket/m/mnist-svm.joblib", key="leakMissing")))
    wait_for(lambda: pods(stack), timeout=180, what="a runtime pod started by the controller")
    loaded(stack, "leak-good")
    bad = failed(stack, "leak-bad")
    failure = json.dumps(bad)

    # a wrong token is refused, and the refusal does not echo it
    with httpx.Client(base_url=stack.admin_url) as client:
        refused = client.delete("/v1/models/leak-good", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    assert refused.status_code == 401
    said.append(refused.text)

    # every read the admin API offers, as a client with the token sees it
    answers: list[str] = []
    for path in ("/v1/models?limit=1000", "/v1/vmodels?limit=1000", "/v1/pods", "/v1/runtimes?limit=1000",
                 "/v1/resources?limit=1000", "/v1/events?limit=1000", "/openapi.json"):
        r = stack.admin("GET", path)
        assert r.status_code == 200, (path, r.text)
        answers.append(r.text)
    for item in stack.admin("GET", "/v1/models?limit=1000").json()["items"]:
        answers.append(stack.admin("GET", f"/v1/models/{item['id']}?events=true").text)
    for item in stack.admin("GET", "/v1/resources?limit=1000").json()["items"]:
        meta = item["metadata"]
        answers.append(stack.admin("GET", f"/v1/resources/{item['kind']}/{meta.get('namespace') or '_'}/{meta['name']}").text)
    for argv in (("get", "secrets"), ("get", "secret", "storage-config"), ("get", "isvc"), ("get", "models"),
                 ("get", "pods"), ("get", "isvc", "leak-bad"),
                 *(("describe", "model", item["id"]) for item in stack.admin("GET", "/v1/models?limit=1000").json()["items"])):
        rc, out, err = run_cli(*argv, "--admin", stack.admin_url)
        answers.append(out + err)
    metrics = [httpx.get(f"{stack.router_rest}/metrics").text, httpx.get(stack.scheduler_metrics).text]  # type: ignore[attr-defined]

    logs = {p: p.read_text(errors="replace") for p in stack.root.rglob("*.log")}
    # the search must be able to find something: what the run did shows in what it searched
    assert any("leak-good" in text for text in logs.values()), "no log mentions the model: the logs were not found"
    assert "leak-bad" in "".join(answers) and "no-such-bucket" in failure, "the answers searched miss the run"
    assert all("modelmesh_" in m for m in metrics), "a metrics page searched is empty"
    # the pods' key files hold the secret (they must), so the search sees it where it may be
    assert SECRET_KEY in (stack.storage_config_dir / "leakS3").read_text()

    places = {**{f"log {p.relative_to(stack.root)}": t for p, t in logs.items()},
              **{f"admin answer {i}": t for i, t in enumerate(answers)},
              **{f"cli/apply output {i}": t for i, t in enumerate(said)},
              **{f"metrics page {i}": t for i, t in enumerate(metrics)},
              "failure status": failure}
    leaks = [(where, value) for where, text in places.items() for s in SECRETS for value in forms(s) if value in text]
    assert not leaks, f"secrets found: {leaks}"
