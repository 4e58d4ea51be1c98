"""Model servers started by the benchmark itself, without meshserve (shared by bench.sizes
and bench.cold): the baselines.

A `DirectServer` is one MLServer, tritonserver or stand-in OVMS process configured exactly
as devstack configures a pod's model server (same binary, environment and settings), but
with no puller, scheduler or router: the benchmark lays out a model folder itself, calls
the server's own load API and talks to its gRPC port directly.

Folders are laid out with the puller's own layout functions (model-settings.json,
config.pbtxt + 1/ + model.py, the Keras -> SavedModel conversion, the OVMS version folder),
so the server loads the very files a pod would; `stage` does that untimed and reports the
Keras conversion's time apart, `load` times only the server's load call.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tritonclient.grpc as grpcclient

from bench.sizes.catalog import EXAMPLES, Case
from meshserve.cli.procs import Proc, ProcessGroup, free_port, http_ok
from meshserve.puller.keras_converter import KerasConverter
from meshserve.puller.memory import tree_pss_bytes


@dataclass
class DirectServer:
    kind: str  # mlserver, triton, ovms
    proc: Proc
    models: Path  # the server's model repository (MLServer: the puller-style model dir)
    rest: str
    grpc: str
    keras_python: str = ""
    native_backends: set[str] = field(default_factory=set)
    ovms_config: Path | None = None
    _ovms_models: dict[str, str] = field(default_factory=dict)
    _client: grpcclient.InferenceServerClient | None = None
    # the puller's warm converter, kept (with the loop its child belongs to) between models
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _keras: KerasConverter | None = None

    def _keras_converter(self) -> KerasConverter:
        if self._keras is None:
            self._keras = KerasConverter(python=self.keras_python)
            self._loop.run_until_complete(self._keras.prestart())  # as the puller's prestart: not timed
        return self._keras

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def memory(self) -> int:
        """The server's process tree, summed PSS (what the puller measures)."""
        return tree_pss_bytes(self.pid)

    # -- model folders -------------------------------------------------------------------
    def stage(self, name: str, case: Case, source: Path | None = None) -> float:
        """Copy the case's files (from `source`, default examples/models/<path>) into the
        repository as model `name` and lay them out for this server. Returns the seconds
        the Keras -> SavedModel conversion took (0 for other formats)."""
        folder = self.models / name
        shutil.rmtree(folder, ignore_errors=True)
        source = source or EXAMPLES / case.path
        if source.is_file():
            folder.mkdir(parents=True)
            shutil.copy2(source, folder / source.name)
        else:
            shutil.copytree(source, folder)
        return self.lay_out(name, case)

    def lay_out(self, name: str, case: Case) -> float:
        folder = self.models / name
        converted = 0.0
        if self.kind == "mlserver":
            from meshserve.puller.adapter import write_model_settings

            write_model_settings(folder, model_id=name, model_type=case.format)
        elif self.kind == "triton":
            from meshserve.puller.adapter import convert_keras, lay_out_triton_model

            if case.format == "keras":
                started = time.monotonic()
                self._loop.run_until_complete(convert_keras(folder, converter=self._keras_converter(), timeout=300))
                converted = time.monotonic() - started
            lay_out_triton_model(folder, model_id=name, model_type=case.format, native_backends=self.native_backends)
        else:
            from meshserve.puller.ovms_adapter import lay_out_ovms_model
            from meshserve.puller.ovms_layout import model_format

            lay_out_ovms_model(folder, model_type=model_format(case.format))
        return converted

    # -- the server's own API --------------------------------------------------------------
    def load(self, name: str) -> float:
        """The server's load call for a staged model, timed (seconds)."""
        started = time.monotonic()
        if self.kind == "ovms":
            self._ovms_apply({**self._ovms_models, name: str((self.models / name).resolve())})
        else:
            response = httpx.post(f"{self.rest}/v2/repository/models/{name}/load", timeout=300)
            if response.status_code != 200:
                raise RuntimeError(f"{self.kind} could not load {name}: {response.text[:500]}")
        return time.monotonic() - started

    def unload(self, name: str) -> None:
        if self.kind == "ovms":
            self._ovms_apply({k: v for k, v in self._ovms_models.items() if k != name})
            return
        httpx.post(f"{self.rest}/v2/repository/models/{name}/unload", json={} if self.kind == "triton" else None, timeout=120)

    def _ovms_apply(self, models: dict[str, str]) -> None:
        """OVMS has no load call: the whole model list in its config file, then a reload,
        which OVMS applies synchronously (as the puller's OVMS adapter does)."""
        from meshserve.puller.ovms_layout import config_json

        assert self.ovms_config is not None
        tmp = self.ovms_config.with_suffix(".tmp")
        tmp.write_text(config_json(models))
        tmp.replace(self.ovms_config)
        response = httpx.post(f"{self.rest}/v1/config/reload", timeout=300)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"OVMS reload failed: {response.text[:500]}")
        self._ovms_models = dict(models)

    def infer(self, name: str, case: Case) -> float:
        """One request straight to the server's gRPC port, timed (seconds)."""
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.grpc)
        data = case.data()
        tensor = grpcclient.InferInput(case.inp, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        started = time.monotonic()
        self._client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput(case.out)], client_timeout=300)
        return time.monotonic() - started

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._keras is not None:
            self._loop.run_until_complete(self._keras.close())
            self._keras = None
        if not self._loop.is_closed():
            self._loop.close()


def start(kind: str, *, group: ProcessGroup, root: Path, name: str) -> DirectServer:
    """A fresh model server of `kind` under `root/<name>`, ready to load."""
    folder = root / name
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = free_port(), free_port()
    rest, grpc = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    if kind == "mlserver":
        import sys

        # the settings devstack's start_pod writes, with this folder's ports and models
        settings = {
            "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
            "metrics_port": free_port(), "load_models_at_startup": False, "model_repository_root": str(models),
            "model_repository_implementation": "meshserve.puller.mlserver_repository.FlatModelRepository",
            "model_repository_implementation_args": {"models_dir": str(models)},
            "parallel_workers": 0, "grpc_max_message_length": 64 * 1024 * 1024,
        }
        (folder / "settings.json").write_text(json.dumps(settings, indent=2))
        mlserver = Path(sys.executable).parent / "mlserver"
        proc = group.start(name, [str(mlserver), "start", str(folder)], env={"PYTHONUNBUFFERED": "1"}, cwd=folder)
        server = DirectServer(kind, proc, models, rest, grpc)
    elif kind == "triton":
        from meshserve.cli import triton

        install = triton.prepare(root)
        proc = group.start(
            name, install.command(repository=models, http_port=http_port, grpc_port=grpc_port),
            env=install.env(repository=models), cwd=folder,
        )
        backends = {p.name for p in install.backends.iterdir() if p.is_dir() and p.name != "python"}
        server = DirectServer(kind, proc, models, rest, grpc, keras_python=str(install.python), native_backends=backends)
    elif kind == "ovms":
        from meshserve.cli import triton
        from meshserve.puller import ovms_fake

        install = triton.prepare(root)
        config = models / "model_config_list.json"
        config.write_text('{"model_config_list": []}\n')
        proc = group.start(
            name,
            [
                str(install.python), str(ovms_fake.SERVER), "--port", str(grpc_port), "--rest_port", str(http_port),
                "--config_path", str(config), "--file_system_poll_wait_seconds", "0",
                "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
            ],
            env={"OMP_NUM_THREADS": "1"}, cwd=folder,
        )
        server = DirectServer(kind, proc, models, rest, grpc, ovms_config=config)
    else:
        raise ValueError(f"unknown model server kind {kind!r}")
    group.wait_until(proc, http_ok(f"{rest}/v2/health/ready"), timeout=120, what=f"starting {name}")
    return server
