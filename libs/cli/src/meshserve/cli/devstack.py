"""The whole stack as local processes: what `meshserve dev` runs and the integration
tests start.

Order: infrastructure (given by MESHSERVE_* variables, or private instances on free
loopback ports with data under `.dev/`), migrations, scheduler, router, runtime pods
(one MLServer process + one puller process each). `stop()` reverses it.

With `StackConfig.internal_tls` (`MESHSERVE_DEV_INTERNAL_TLS=1`) every internal gRPC hop runs on
mutual TLS: `start_infra` makes a private CA (its key is never written) and one certificate per
service (scheduler, router, controller, puller; serverAuth + clientAuth, for localhost and
127.0.0.1) under `<root>/tls/` (folder 0700, keys 0600), and each process gets the one setting,
`MESHSERVE_INTERNAL_TLS__{CERT,KEY,CA}_FILE` (`internal_tls_env`). Runtime pods the controller
starts inherit the controller's environment, so they present the controller's certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from meshserve.cli import infra
from meshserve.cli.procs import ProcessGroup, free_port, http_ok, port_is_free

EXAMPLE_BUCKET = "modelmesh-example-models"
S3_ACCESS_KEY = "meshserve-local"
S3_SECRET_KEY = "meshserve-local-secret"
INTERNAL_TLS_SERVICES = ("scheduler", "router", "controller", "puller")
"""The services that get a certificate of their own from the local stack's private CA."""


@dataclass
class StackConfig:
    root: Path
    pods: int = 2
    pod_capacity_bytes: int = 512 * 1024 * 1024
    preferred_ports: bool = False          # try 8033 / 8034 / 8080 first (make dev)
    isolate: bool = False                  # own database + key prefix on shared servers (tests)
    admin_token: str | None = None
    redis_url: str | None = None
    database_url: str | None = None
    s3_endpoint: str | None = None
    pvc_dir: Path | None = None            # pvc://<claim>/... reads <pvc_dir>/<claim>/...; default <root>/pvc
    extra_env: dict[str, str] = field(default_factory=dict)
    internal_tls: bool = False             # mutual TLS on every internal gRPC hop, from a private CA

    @classmethod
    def from_env(cls, root: Path, **kwargs: object) -> StackConfig:
        given: dict[str, object] = {
            "internal_tls": os.environ.get("MESHSERVE_DEV_INTERNAL_TLS", "").strip().lower() in ("1", "true", "yes", "on"),
            **kwargs,
        }
        return cls(
            root=root,
            redis_url=os.environ.get("MESHSERVE_REDIS_URL") or None,
            database_url=os.environ.get("MESHSERVE_DATABASE_URL") or None,
            s3_endpoint=os.environ.get("MESHSERVE_S3_ENDPOINT") or None,
            **given,  # type: ignore[arg-type]
        )


@dataclass
class PodHandle:
    pod_id: str
    mlserver_grpc: str
    mlserver_rest: str
    puller_address: str
    mlserver: object
    puller: object


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.root = config.root
        self.group = ProcessGroup(log_dir=self.root / "logs")
        self.python = sys.executable
        self.bin = Path(sys.executable).parent
        self.key_prefix = f"ms{uuid.uuid4().hex[:8]}" if config.isolate else "ms"
        self.pods: list[PodHandle] = []
        self.redis_url = ""
        self.database_url = ""
        self.s3_endpoint = ""
        self.scheduler_grpc = ""
        self.admin_url = ""
        self.router_grpc = ""
        self.router_rest = ""
        self.scheduler_proc: object = None
        self.router_proc: object = None
        self.controller_health = ""
        self._created_db: str | None = None
        self.postgres: infra.Postgres | None = None
        self.tls_dir = self.root / "tls"

    # -- infrastructure ---------------------------------------------------------------
    def start_infra(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis_url = self.config.redis_url or infra.start_redis(self.group, self.root / "redis")
        if self.config.database_url:
            self.database_url = self.config.database_url
            if self.config.isolate:
                self.database_url = self._isolated_database(self.config.database_url)
        else:
            self.postgres = infra.start_postgres(self.group, self.root / "postgres")
            self.database_url = self.postgres.url
        self.s3_endpoint = self.config.s3_endpoint or infra.start_s3(self.group)
        self._write_storage_config()
        if self.config.internal_tls:
            write_internal_tls(self.tls_dir, INTERNAL_TLS_SERVICES)

    def internal_tls_env(self, service: str) -> dict[str, str]:
        """The one internal TLS setting for a process of `service` (nothing when it is off)."""
        if not self.config.internal_tls:
            return {}
        return {
            "MESHSERVE_INTERNAL_TLS__CERT_FILE": str(self.tls_dir / f"{service}.crt"),
            "MESHSERVE_INTERNAL_TLS__KEY_FILE": str(self.tls_dir / f"{service}.key"),
            "MESHSERVE_INTERNAL_TLS__CA_FILE": str(self.tls_dir / "ca.crt"),
        }

    def _isolated_database(self, url: str) -> str:
        from meshserve.scheduler.registry import to_sync_url

        name = f"meshserve_test_{uuid.uuid4().hex[:10]}"
        base = make_url(to_sync_url(url))
        admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        self._created_db = name

        def drop() -> None:
            engine = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()

        self.group.on_stop.insert(0, drop)
        return base.set(database=name).render_as_string(hide_password=False)

    @property
    def storage_config_dir(self) -> Path:
        return self.root / "storage-config"

    @property
    def pvc_mounts_dir(self) -> Path:
        """Local mode's PersistentVolumeClaims: `pvc://<claim>/<path>` is `<this>/<claim>/<path>`
        (the pullers' MESHSERVE_PULLER_PVC_MOUNTS_DIR; a claim is a folder, or a symlink to one)."""
        return self.config.pvc_dir or self.root / "pvc"

    def s3_credentials(self) -> dict[str, str]:
        if self.config.s3_endpoint:
            return {
                "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
                "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            }
        return {"access_key_id": S3_ACCESS_KEY, "secret_access_key": S3_SECRET_KEY}

    def _write_storage_config(self) -> None:
        """The `storage-config` secret as files, one JSON per key (as Kubernetes mounts it)."""
        d = self.storage_config_dir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        entry = {
            "type": "s3",
            **self.s3_credentials(),
            "endpoint_url": self.s3_endpoint,
            "bucket": EXAMPLE_BUCKET,
            "region": "us-east-1",
        }
        for key in ("localMinIO", "default"):
            path = d / key
            path.write_text(json.dumps(entry))
            os.chmod(path, 0o600)

    def s3_client(self):  # type: ignore[no-untyped-def]
        creds = self.s3_credentials()
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"],
            region_name="us-east-1",
        )

    def upload_examples(self, models_dir: Path) -> list[str]:
        client = self.s3_client()
        try:
            client.create_bucket(Bucket=EXAMPLE_BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        keys = []
        for path in sorted(models_dir.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(models_dir).as_posix()
                client.upload_file(str(path), EXAMPLE_BUCKET, key)
                keys.append(key)
        return keys

    # -- services -------------------------------------------------------------------------
    def _port(self, preferred: int) -> int:
        if self.config.preferred_ports and port_is_free(preferred, "0.0.0.0"):
            return preferred
        return free_port()

    def service_env(self) -> dict[str, str]:
        env = {
            "MESHSERVE_REDIS_URL": self.redis_url,
            "MESHSERVE_DATABASE_URL": self.database_url,
            "MESHSERVE_S3_ENDPOINT": self.s3_endpoint,
            "MESHSERVE_SCHEDULER_KEY_PREFIX": self.key_prefix,
            "PYTHONUNBUFFERED": "1",
            **self.config.extra_env,
        }
        if self.config.admin_token:
            env["MESHSERVE_SCHEDULER_ADMIN_TOKEN"] = self.config.admin_token
        return env

    def migrate(self) -> None:
        from meshserve.scheduler.migrate import upgrade

        upgrade(self.database_url)

    def start_scheduler(self) -> None:
        grpc_port, admin_port = self._port(8034), self._port(8080)
        env = {
            **self.service_env(),
            **self.internal_tls_env("scheduler"),
            "MESHSERVE_SCHEDULER_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
            "MESHSERVE_SCHEDULER_ADMIN_HOST": "127.0.0.1",
            "MESHSERVE_SCHEDULER_ADMIN_PORT": str(admin_port),
            # off unless a test asks for it (StackConfig.extra_env)
            "MESHSERVE_SCHEDULER_METRICS_PORT": self.config.extra_env.get("MESHSERVE_SCHEDULER_METRICS_PORT", "0"),
        }
        self.scheduler_grpc = f"127.0.0.1:{grpc_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        proc = self.group.start("scheduler", [self.python, "-m", "meshserve.scheduler"], env=env)
        self.scheduler_proc = proc
        self.group.wait_until(proc, http_ok(f"{self.admin_url}/readyz"), timeout=60, what="starting the scheduler")

    def start_extra_scheduler(self) -> tuple[str, str]:
        """A second scheduler replica on the same Redis/Postgres: (gRPC address, admin URL)."""
        grpc_port, admin_port = free_port(), free_port()
        env = {
            **self.service_env(),
            **self.internal_tls_env("scheduler"),
            "MESHSERVE_SCHEDULER_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
            "MESHSERVE_SCHEDULER_ADMIN_HOST": "127.0.0.1",
            "MESHSERVE_SCHEDULER_ADMIN_PORT": str(admin_port),
            "MESHSERVE_SCHEDULER_METRICS_PORT": "0",
        }
        n = sum(1 for p in self.group.procs if p.name.startswith("scheduler"))
        proc = self.group.start(f"scheduler-{n}", [self.python, "-m", "meshserve.scheduler"], env=env)
        admin = f"http://127.0.0.1:{admin_port}"
        self.group.wait_until(proc, http_ok(f"{admin}/readyz"), timeout=60, what="starting another scheduler")
        return f"127.0.0.1:{grpc_port}", admin

    def start_controller(self, *, extra_env: dict[str, str] | None = None, timeout: float = 60) -> None:
        """The controller in local mode: watches the resources `meshserve apply` stores in
        the scheduler, registers models, and runs runtime pods as local processes. `timeout`
        bounds its start-up (a test on a loaded host may allow more)."""
        health = free_port()
        env = {
            **self.service_env(),
            **self.internal_tls_env("controller"),
            "MESHSERVE_CONTROLLER_MODE": "local",
            "MESHSERVE_CONTROLLER_ADMIN_URL": self.admin_url,
            "MESHSERVE_CONTROLLER_SCHEDULER_ADDRESS": self.scheduler_grpc,
            "MESHSERVE_CONTROLLER_LOCAL_ROOT": str(self.root),
            "MESHSERVE_CONTROLLER_HEALTH_PORT": str(health),
            "MESHSERVE_CONTROLLER_METRICS_PORT": "0",
            **(extra_env or {}),
        }
        if self.config.admin_token:
            env["MESHSERVE_CONTROLLER_ADMIN_TOKEN"] = self.config.admin_token
        self.controller_health = f"http://127.0.0.1:{health}"
        proc = self.group.start("controller", [self.python, "-m", "meshserve.controller"], env=env)
        self.group.wait_until(proc, http_ok(f"{self.controller_health}/readyz"), timeout=timeout, what="starting the controller")

    def start_router(self) -> None:
        port, rest_port = self._port(8033), self._port(8008)
        env = {
            **self.service_env(),
            **self.internal_tls_env("router"),
            "MESHSERVE_ROUTER_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "MESHSERVE_ROUTER_REST_HOST": "127.0.0.1",
            "MESHSERVE_ROUTER_REST_PORT": str(rest_port),
            "MESHSERVE_ROUTER_SCHEDULER_ADDRESS": self.scheduler_grpc,
            "MESHSERVE_ROUTER_METRICS_PORT": "0",  # /metrics is served on the REST port
        }
        self.router_grpc = f"127.0.0.1:{port}"
        self.router_rest = f"http://127.0.0.1:{rest_port}"
        proc = self.group.start("router", [self.python, "-m", "meshserve.router"], env=env)
        self.router_proc = proc
        self.group.wait_until(proc, self._router_ready, timeout=60, what="starting the router")
        self.group.wait_until(proc, http_ok(f"{self.router_rest}/readyz"), timeout=30, what="starting the router's REST port")
        # MESHSERVE_ROUTER_PROCESSES=N: N routers on the same ports (Envoy listens with SO_REUSEPORT)
        for i in range(1, self._router_processes()):
            extra = self.group.start(f"router-{i}", [self.python, "-m", "meshserve.router"],
                                     env={**env, "MESHSERVE_ROUTER_ROUTER_ID": f"router-{i}"})
            self.group.wait_until(extra, self._router_ready, timeout=60, what=f"starting router {i}")

    @staticmethod
    def _router_processes() -> int:
        value = os.environ.get("MESHSERVE_ROUTER_PROCESSES", "1").strip() or "1"
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"MESHSERVE_ROUTER_PROCESSES={value!r}: give a whole number of router processes (1 or more)")
        n = int(value)
        if n > 1 and os.environ.get("MESHSERVE_ROUTER_DATA_PATH", "envoy") == "python":
            raise ValueError("MESHSERVE_ROUTER_PROCESSES > 1 needs the Envoy data path (routers share their ports through it)")
        return n

    def _router_ready(self) -> bool:
        import grpc

        from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
        from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2_grpc as v2g

        with grpc.insecure_channel(self.router_grpc) as channel:
            return bool(v2g.GRPCInferenceServiceStub(channel).ServerReady(v2.ServerReadyRequest(), timeout=1).ready)

    def start_pod(
        self,
        index: int | None = None,
        *,
        capacity_bytes: int | None = None,
        env: dict[str, str] | None = None,
        pod_id: str | None = None,
    ) -> PodHandle:
        index = len(self.pods) if index is None else index
        pod_id = pod_id or f"pod-{index}"
        pod_dir = self.root / "pods" / pod_id
        models = pod_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        settings = {
            "debug": False,
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "load_models_at_startup": False,
            "model_repository_root": str(models),
            "model_repository_implementation": "meshserve.puller.mlserver_repository.FlatModelRepository",
            "model_repository_implementation_args": {"models_dir": str(models)},
            "parallel_workers": 0,
            "grpc_max_message_length": 64 * 1024 * 1024,
        }
        (pod_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        mlserver = self.group.start(
            f"{pod_id}-mlserver",
            [str(self.bin / "mlserver"), "start", str(pod_dir)],
            env={"PYTHONUNBUFFERED": "1"},
            cwd=pod_dir,
        )
        (pod_dir / "mlserver.pid").write_text(str(mlserver.popen.pid))
        return self._start_puller(
            pod_id, pod_dir, models, mlserver, http_port=http_port, grpc_port=grpc_port, capacity_bytes=capacity_bytes, env=env
        )

    def start_triton_pod(
        self, *, capacity_bytes: int | None = None, env: dict[str, str] | None = None, pod_id: str | None = None
    ) -> PodHandle:
        """A runtime pod of `triton-2.x`: tritonserver (explicit model control) + a puller
        with the Triton adapter. The pod's model folder is Triton's model repository."""
        from meshserve.cli import triton

        install = triton.prepare(self.root)
        pod_id = pod_id or f"triton-{len(self.pods)}"
        pod_dir = self.root / "pods" / pod_id
        models = pod_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        http_port, grpc_port = free_port(), free_port()
        server = self.group.start(
            f"{pod_id}-triton",
            install.command(repository=models, http_port=http_port, grpc_port=grpc_port),
            env=install.env(repository=models),
            cwd=pod_dir,
        )
        (pod_dir / "triton.pid").write_text(str(server.popen.pid))
        return self._start_puller(
            pod_id, pod_dir, models, server, http_port=http_port, grpc_port=grpc_port, capacity_bytes=capacity_bytes,
            env={
                "MESHSERVE_PULLER_MODEL_SERVER_KIND": "triton",
                "MESHSERVE_PULLER_MODEL_SERVER_BACKENDS_DIR": str(install.backends),
                "MESHSERVE_PULLER_MODEL_SERVER_PID_FILE": str(pod_dir / "triton.pid"),
                "MESHSERVE_PULLER_RUNTIME": "triton-2.x",
                "MESHSERVE_PULLER_SUPPORTED_FORMATS": "keras:2,onnx:1,openvino_ir:opset1,pytorch:1,tensorflow:1,tensorflow:2",
                "MESHSERVE_PULLER_KERAS_CONVERTER_PYTHON": str(install.python),
                **(env or {}),
            },
        )

    def start_spi_pod(
        self,
        command: list[str],
        *,
        runtime: str,
        formats: str,
        pod_id: str | None = None,
        capacity_bytes: int | None = None,
        env: dict[str, str] | None = None,
        runtime_env: dict[str, str] | None = None,
        measure_memory: bool = False,
        wait: bool = True,
    ) -> PodHandle:
        """A runtime pod of a custom runtime that serves ModelMesh's runtime SPI itself
        (`mmesh.ModelRuntime`, no builtInAdapter): the process `command` + a puller with the
        SPI adapter (`MESHSERVE_PULLER_MODEL_SERVER_KIND=spi`).

        The runtime's endpoints are chosen here and passed into `command` through the
        placeholders `{grpc_endpoint}` (a Unix socket in the pod folder, `unix:<path>`),
        `{data_endpoint}` (`port:<n>` on 127.0.0.1), `{data_port}`, `{pod_dir}` and
        `{storage_config_dir}` (the stack's storage-config secret, for runtimes that fetch
        their own files). `env` goes to the puller, `runtime_env` to the runtime process.
        Without `measure_memory` the puller gets no process to measure, so
        the size the runtime reports is the copy's size. With `wait`, returns once the
        puller has registered (it does so only after runtimeStatus answered READY)."""
        pod_id = pod_id or f"spi-{len(self.pods)}"
        pod_dir = self.root / "pods" / pod_id
        models = pod_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        socket_path = pod_dir / "mmesh.sock"
        if len(str(socket_path)) > 100:  # sun_path holds 108 bytes
            import shutil
            import tempfile

            short = tempfile.mkdtemp(prefix="mmesh-")
            self.group.on_stop.append(lambda: shutil.rmtree(short, ignore_errors=True))
            socket_path = Path(short) / "runtime.sock"
        data_port = free_port()
        values = {
            "grpc_endpoint": f"unix:{socket_path}", "data_endpoint": f"port:{data_port}", "data_port": str(data_port),
            "pod_dir": str(pod_dir), "storage_config_dir": str(self.storage_config_dir),
        }
        server = self.group.start(
            f"{pod_id}-runtime", [arg.format(**values) for arg in command],
            env={"PYTHONUNBUFFERED": "1", **(runtime_env or {})}, cwd=pod_dir,
        )
        pid_file = pod_dir / ("runtime.pid" if measure_memory else "no-memory-probe.pid")
        if measure_memory:
            pid_file.write_text(str(server.popen.pid))
        handle = self._start_puller(
            pod_id, pod_dir, models, server, http_port=0, grpc_port=data_port, capacity_bytes=capacity_bytes,
            env={
                "MESHSERVE_PULLER_MODEL_SERVER_KIND": "spi",
                "MESHSERVE_PULLER_MODEL_SERVER_ENDPOINT": values["grpc_endpoint"],
                "MESHSERVE_PULLER_MODEL_SERVER_PID_FILE": str(pid_file),
                "MESHSERVE_PULLER_RUNTIME": runtime,
                "MESHSERVE_PULLER_SUPPORTED_FORMATS": formats,
                **(env or {}),
            },
        )
        handle.mlserver_rest = ""  # an SPI runtime need not serve REST
        if wait:
            def registered() -> bool:
                return pod_id in {p["id"] for p in self.admin("GET", "/v1/pods").json()["items"]}

            self.group.wait_until(handle.puller, registered, timeout=90, what=f"waiting for {pod_id} to register")  # type: ignore[arg-type]
        return handle

    def start_ovms_pod(
        self, *, capacity_bytes: int | None = None, env: dict[str, str] | None = None, pod_id: str | None = None
    ) -> PodHandle:
        """A runtime pod of `ovms-1.x`. OpenVINO Model Server cannot be installed here, so the
        model server is meshserve's stand-in (`meshserve.puller.ovms_fake`: OVMS's config
        file, reload and status REST API, TF-Serving Predict and KServe v2 gRPC, models run
        with the `openvino` package in Triton's environment) + a puller with the OVMS adapter."""
        from meshserve.cli import triton
        from meshserve.puller import ovms_fake

        install = triton.prepare(self.root)  # for the environment that has openvino
        pod_id = pod_id or f"ovms-{len(self.pods)}"
        pod_dir = self.root / "pods" / pod_id
        models = pod_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        config = models / "model_config_list.json"
        config.write_text('{"model_config_list": []}\n')  # OVMS does not start without one
        http_port, grpc_port = free_port(), free_port()
        server = self.group.start(
            f"{pod_id}-ovms",
            [
                str(install.python), str(ovms_fake.SERVER), "--port", str(grpc_port), "--rest_port", str(http_port),
                "--config_path", str(config), "--file_system_poll_wait_seconds", "0",
                "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
            ],
            env={"OMP_NUM_THREADS": "1"},
            cwd=pod_dir,
        )
        (pod_dir / "ovms.pid").write_text(str(server.popen.pid))
        return self._start_puller(
            pod_id, pod_dir, models, server, http_port=http_port, grpc_port=grpc_port, capacity_bytes=capacity_bytes,
            env={
                "MESHSERVE_PULLER_MODEL_SERVER_KIND": "ovms",
                "MESHSERVE_PULLER_OVMS_CONFIG_PATH": str(config),
                "MESHSERVE_PULLER_MODEL_SERVER_PID_FILE": str(pod_dir / "ovms.pid"),
                "MESHSERVE_PULLER_RUNTIME": "ovms-1.x",
                "MESHSERVE_PULLER_SUPPORTED_FORMATS": "openvino_ir:opset1",
                "MESHSERVE_PULLER_PROTOCOL_VERSIONS": "grpc-v1",
                **(env or {}),
            },
        )

    def _start_puller(
        self, pod_id: str, pod_dir: Path, models: Path, server: object, *, http_port: int, grpc_port: int,
        capacity_bytes: int | None, env: dict[str, str] | None,
    ) -> PodHandle:
        puller_port = free_port()
        env = {
            **self.service_env(),
            **self.internal_tls_env("puller"),
            "MESHSERVE_PULLER_POD_ID": pod_id,
            "MESHSERVE_PULLER_LISTEN_ADDRESS": f"127.0.0.1:{puller_port}",
            "MESHSERVE_PULLER_MODEL_DIR": str(models),
            "MESHSERVE_PULLER_STORAGE_CONFIG_DIR": str(self.storage_config_dir),
            "MESHSERVE_PULLER_PVC_MOUNTS_DIR": str(self.pvc_mounts_dir),
            "MESHSERVE_PULLER_MODEL_SERVER_GRPC": f"127.0.0.1:{grpc_port}",
            "MESHSERVE_PULLER_MODEL_SERVER_REST": f"http://127.0.0.1:{http_port}",
            "MESHSERVE_PULLER_MODEL_SERVER_PID_FILE": str(pod_dir / "mlserver.pid"),
            "MESHSERVE_PULLER_CAPACITY_BYTES": str(capacity_bytes or self.config.pod_capacity_bytes),
            "MESHSERVE_PULLER_SCHEDULER_ADDRESS": self.scheduler_grpc,
            "MESHSERVE_PULLER_HEARTBEAT_INTERVAL_SECONDS": "1",
            **(env or {}),
        }
        puller = self.group.start(f"{pod_id}-puller", [self.python, "-m", "meshserve.puller"], env=env)
        handle = PodHandle(
            pod_id=pod_id,
            mlserver_grpc=f"127.0.0.1:{grpc_port}",
            mlserver_rest=f"http://127.0.0.1:{http_port}",
            puller_address=f"127.0.0.1:{puller_port}",
            mlserver=server,
            puller=puller,
        )
        self.pods.append(handle)
        return handle

    def wait_for_pods(self, pods: list[PodHandle], timeout: float = 90) -> None:
        if not pods:
            return
        for pod in pods:
            self.group.wait_until(
                pod.mlserver, http_ok(f"{pod.mlserver_rest}/v2/health/ready"), timeout=timeout, what=f"starting {pod.pod_id} MLServer"  # type: ignore[arg-type]
            )

        def registered() -> bool:
            listed = {p["id"] for p in self.admin("GET", "/v1/pods").json()["items"]}
            return all(p.pod_id in listed for p in pods)

        self.group.wait_until(pods[-1].puller, registered, timeout=timeout, what="waiting for pods to register")  # type: ignore[arg-type]

    def start(self, *, controller: bool = False) -> None:
        try:
            self.start_infra()
            self.migrate()
            self.start_scheduler()
            self.start_router()
            if controller:
                self.start_controller()
            pods = [self.start_pod() for _ in range(self.config.pods)]
            self.wait_for_pods(pods)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.group.stop_all()

    def restart_redis(self) -> None:
        """Stop the private Redis (all live state is lost) and start an empty one on the same port."""
        proc = next(p for p in self.group.procs if p.name == "redis")
        self.group.stop(proc)
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        infra.start_redis(self.group, self.root / "redis", port=port)

    # -- admin API helpers -------------------------------------------------------------------
    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if self.config.admin_token:
            headers.setdefault("Authorization", f"Bearer {self.config.admin_token}")
        return httpx.request(method, f"{self.admin_url}{path}", headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]

    def register(self, name: str, *, storage_uri: str, format: str = "sklearn", **extra: object) -> httpx.Response:
        body = {"name": name, "format": format, "storageUri": storage_uri, **extra}
        return self.admin("POST", "/v1/models", json=body)


def write_internal_tls(directory: Path, services: tuple[str, ...], *, days: int = 30) -> None:
    """A private CA (`ca.crt`; its key lives only in this call) and, per service, `<name>.crt`
    + `<name>.key` signed by it, valid as server and client for localhost and 127.0.0.1: the
    local stack's internal mutual TLS. The folder is 0700, the keys 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshserve local CA {uuid.uuid4().hex[:8]}")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    names = x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    for service in services:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshserve-{service}")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(names, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_path = directory / f"{service}.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        os.chmod(key_path, 0o600)  # an existing file keeps its mode through O_CREAT
        (directory / f"{service}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
