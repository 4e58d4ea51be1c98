"""The pure half of `python -m bench.sizes --in-pod` (bench/sizes/podspec.py): the controller's
real Deployment turned into Podman arguments as a kubelet would run it, the cgroup working set
and the table. The Podman run itself needs root and images (not part of `make test`)."""

from __future__ import annotations

import pytest

from bench.sizes import pod
from bench.sizes.podspec import (
    Row,
    Volume,
    cgroup_working_set,
    expand,
    parse_memory_stat,
    resolve_env,
    run_args,
    table,
)

FIELDS = {"metadata.name": "rt-pod-0", "status.podIP": "10.1.2.3"}


def test_env_resolves_the_downward_api_and_earlier_variables_like_the_kubelet() -> None:
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "ADDR", "value": "$(POD_IP):8085"},
        {"name": "LATER", "value": "$(DEFINED_AFTER)"},   # not defined yet: kept as written
        {"name": "DEFINED_AFTER", "value": "x"},
        {"name": "ESCAPED", "value": "$$(POD_IP)"},
    ]
    assert resolve_env(env, FIELDS) == {
        "POD_IP": "10.1.2.3", "ADDR": "10.1.2.3:8085", "LATER": "$(DEFINED_AFTER)", "DEFINED_AFTER": "x",
        "ESCAPED": "$(POD_IP)",
    }
    assert expand("$(A)-$(B)", {"A": "1"}) == "1-$(B)"


def test_an_env_source_that_only_a_cluster_has_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="SECRET_THING"):
        resolve_env([{"name": "SECRET_THING", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}], FIELDS)


def _containers() -> tuple[dict, dict]:
    manifest = pod.render("127.0.0.1:8034")
    spec = manifest["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    by_name = {c["name"]: c for c in spec["containers"]}
    return spec, by_name


def test_the_puller_container_gets_the_deployments_env_security_and_mounts() -> None:
    spec, containers = _containers()
    vols = {v["name"]: Volume(f"/h/{v['name']}", read_only="secret" in v) for v in spec["volumes"]}
    args = run_args(containers["puller"], pod="p", name="p-puller", pod_security=spec["securityContext"],
                    volumes=vols, fields=FIELDS)
    env = dict(a.split("=", 1) for a, flag in zip(args[1:], args, strict=False) if flag == "--env")
    assert env["MESHSERVE_PULLER_ADVERTISE_ADDRESS"] == "10.1.2.3:8085"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_ADVERTISE_REST"] == "http://10.1.2.3:8002"
    assert env["MESHSERVE_PULLER_MODEL_SERVER_PROCESS"] == r"(^|/)mlserver start( |$)"
    assert env["MESHSERVE_PULLER_RUNTIME"] == pod.IN_POD_RUNTIME
    assert env["MESHSERVE_PULLER_POD_ID"] == "rt-pod-0"
    assert "/h/storage-config:/storage-config:ro" in args and "/h/models-dir:/models" in args
    assert args[args.index("--user") + 1] == "10001:10001"
    assert "--read-only" in args and args[args.index("--cap-drop") + 1] == "ALL"
    # the image's entrypoint replaced by the container's command, its arguments after the image
    i = args.index("meshserve/puller:0.1.0")
    assert args[args.index("--entrypoint") + 1] == "python" and args[i + 1:] == ["-m", "meshserve.puller"]


def test_the_model_server_runs_its_images_command_with_the_memory_limit() -> None:
    spec, containers = _containers()
    vols = {v["name"]: Volume(f"/h/{v['name']}") for v in spec["volumes"]}
    args = run_args(containers["mlserver"], pod="p", name="p-mlserver", pod_security=spec["securityContext"],
                    volumes=vols, fields=FIELDS)
    assert args[-1] == "meshserve/mlserver:0.1.0" and "--entrypoint" not in args
    assert args[args.index("--memory") + 1] == str(1 << 30)


def test_a_mount_without_a_host_folder_is_an_error_naming_the_volume() -> None:
    with pytest.raises(ValueError, match="'models-dir'"):
        run_args({"name": "c", "image": "i", "volumeMounts": [{"name": "models-dir", "mountPath": "/models"}]},
                 pod="p", name="c", pod_security={}, volumes={}, fields={})


def test_working_set_is_usage_less_inactive_file_on_v1_and_v2() -> None:
    v1 = parse_memory_stat("cache 100\nrss 50\ntotal_inactive_file 30\ninactive_file 7\n")
    assert cgroup_working_set(200, v1) == 170
    assert cgroup_working_set(200, parse_memory_stat("anon 50\ninactive_file 40\n")) == 160
    assert cgroup_working_set(10, {"inactive_file": 40}) == 0


def test_table_has_the_ratio_and_marks_predicted_sizes() -> None:
    mib = 2**20
    text = table([Row("sklearn-0", "sklearn", mib, 4 * mib, 5 * mib, True, 6 * mib),
                  Row("xgboost-0", "xgboost", mib, 0, 2 * mib, False, 0, local_measured=False)])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["model", "format"]
    assert lines[2].split() == ["sklearn-0", "sklearn", "1.0", "4.0", "5.0", "6.0", "1.25"]
    assert lines[3].split() == ["xgboost-0", "xgboost", "1.0", "0.0*", "2.0*", "0.0", "-"]
    assert lines[-1].startswith("* ")
