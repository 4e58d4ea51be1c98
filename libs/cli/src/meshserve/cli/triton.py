"""Triton Inference Server for local runtime pods, from the `nvidia-pytriton` wheel.

The wheel ships `tritonserver` 2.51 with only the python backend; it lives in its own
environment (`.venv-triton`, made by the Makefile: nvidia-pytriton pins numpy<2). The
server tree is copied once per stack into a writable folder with the python backend stub
for this Python beside the backend, as Triton expects; the python-backend models run in
the Triton environment (its `bin` first on PATH), so the frameworks they import
(onnxruntime, ...) are installed there.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


def triton_venv() -> Path:
    given = os.environ.get("MESHSERVE_TRITON_VENV")
    return Path(given) if given else Path(sys.prefix).parent / ".venv-triton"


@dataclass(frozen=True)
class TritonInstall:
    server: Path  # the writable copy: bin/, backends/, caches/
    libs: Path  # nvidia_pytriton.libs (LD_LIBRARY_PATH)
    venv: Path

    @property
    def binary(self) -> Path:
        return self.server / "bin" / "tritonserver"

    @property
    def python(self) -> Path:  # the environment's frameworks: tensorflow converts Keras files
        return self.venv / "bin" / "python"

    @property
    def backends(self) -> Path:
        return self.server / "backends"

    def command(self, *, repository: Path, http_port: int, grpc_port: int) -> list[str]:
        return [
            str(self.binary),
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            "--strict-readiness=false",  # as upstream: ready while a model loads or failed to
            f"--backend-directory={self.backends}",
            f"--cache-directory={self.server / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]

    def env(self, *, repository: Path) -> dict[str, str]:
        return {
            "LD_LIBRARY_PATH": str(self.libs),
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "MESHSERVE_TRITON_REPOSITORY": str(repository),  # read by triton_python/model.py
            "OMP_NUM_THREADS": "1",
            # the python backend forks a stub per model while gRPC's threads run: gRPC's fork
            # handlers then crash the child now and then (ev_epoll1 "Check failed"); the child
            # only execs the stub, so it needs none of them
            "GRPC_ENABLE_FORK_SUPPORT": "0",
            "TF_CPP_MIN_LOG_LEVEL": "2",  # tensorflow's start-up chatter stays out of the server log
        }


def prepare(root: Path, venv: Path | None = None) -> TritonInstall:
    """The server tree copied under `root` (once), or a one-line error saying what to run."""
    venv = venv or triton_venv()
    pythons = sorted((venv / "lib").glob("python3.*/site-packages"))
    site = pythons[0] if pythons else None
    source = site / "pytriton" / "tritonserver" if site else None
    if source is None or not (source / "bin" / "tritonserver").is_file():
        raise RuntimeError(
            f"Triton is not installed in {venv}: run `make .venv-triton/.installed` (make dev and make test do it), "
            "or set MESHSERVE_TRITON_VENV to an environment with nvidia-pytriton"
        )
    assert site is not None
    server = root / "triton-server"
    version = site.parent.name.removeprefix("python")  # the stub must match the environment's Python
    stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (server / "backends" / "python" / "triton_python_backend_stub").is_file():
        staging = root / "triton-server.part"
        shutil.rmtree(staging, ignore_errors=True)
        for part in ("bin", "backends", "caches"):
            if (source / part).exists():
                shutil.copytree(source / part, staging / part, symlinks=True)
        (staging / "caches").mkdir(exist_ok=True)
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        shutil.rmtree(server, ignore_errors=True)
        staging.rename(server)
    return TritonInstall(server=server, libs=site / "nvidia_pytriton.libs", venv=venv)
