"""Lifecycle: named tasks whose failure is logged by name and stops the service; closers in
reverse order; run_main's exit codes; SIGTERM stops a real child process cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import textwrap

import pytest

from meshserve.common.lifecycle import Lifecycle, ServiceFailed, run_main


class _Broken(Exception):
    pass


async def test_a_failing_task_is_logged_by_name_and_stops_the_service(caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []
    forever = asyncio.Event()
    with pytest.raises(ServiceFailed) as failed:
        async with Lifecycle("demo") as life:
            life.on_close(lambda: closed.append("first"))

            async def close_second() -> None:
                closed.append("second")

            life.on_close(close_second)
            life.spawn("waits", forever.wait())

            async def heartbeat() -> None:
                raise _Broken("scheduler gone")

            life.spawn("heartbeat", heartbeat())
            await life.wait()
    assert failed.value.task == "heartbeat" and isinstance(failed.value.__cause__, _Broken)
    assert closed == ["second", "first"]
    assert life.tasks["waits"].cancelled()
    record = next(r for r in caplog.records if r.name == "meshserve.common.lifecycle" and r.levelno == logging.ERROR)
    assert record.getMessage() == "demo: background task 'heartbeat' failed; stopping"
    assert record.exc_info is not None and isinstance(record.exc_info[1], _Broken)


async def test_a_loop_that_returns_is_a_failure_unless_it_may_finish() -> None:
    async def done() -> None:
        return None

    async with Lifecycle("demo") as life:
        life.spawn("one-shot", done(), may_finish=True)
        await life.tasks["one-shot"]
        assert not life.stopping
        life.stop()
    with pytest.raises(ServiceFailed, match="'loop'"):
        async with Lifecycle("demo") as life:
            life.spawn("loop", done())
            await life.wait()


async def test_a_clean_stop_cancels_tasks_and_a_failing_closer_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []
    async with Lifecycle("demo") as life:
        life.on_close(lambda: closed.append("last"))

        def broken() -> None:
            raise OSError("already closed")

        life.on_close(broken, name="channel")
        life.spawn("forever", asyncio.Event().wait())
        life.stop()
    assert closed == ["last"]
    assert life.failure is None and life.tasks["forever"].cancelled()
    assert "demo: closing channel failed" in caplog.text


async def test_names_are_unique_while_running() -> None:
    async with Lifecycle("demo") as life:
        life.spawn("x", asyncio.Event().wait())
        with pytest.raises(ValueError, match="'x'"):
            life.spawn("x", asyncio.Event().wait())
        life.stop()


def test_run_main_exit_codes() -> None:
    async def clean(life: Lifecycle) -> None:
        life.stop()
        await life.wait()

    async def failing(life: Lifecycle) -> None:
        async def boom() -> None:
            raise _Broken()

        life.spawn("boom", boom())
        await life.wait()

    assert run_main("demo", clean) == 0
    assert run_main("demo", failing) == 1


async def test_sigterm_stops_a_real_process_gracefully(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from meshserve.common.lifecycle import Lifecycle, run_main

        async def serve(life: Lifecycle) -> None:
            life.on_close(lambda: print("closed", flush=True))
            life.spawn("work", asyncio.Event().wait())
            print("up", flush=True)
            await life.wait()

        sys.exit(run_main("child", serve))
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"up\n"
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        assert await proc.wait() == 0, rest
        assert rest == b"closed\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_task_spawned_not_to_be_cancelled_at_stop_runs_through_the_closers_until_one_ends_it() -> None:
    seen: list[str] = []
    server_exit = asyncio.Event()

    async def server() -> None:  # a server that stops when told, as uvicorn's should_exit
        await server_exit.wait()
        seen.append("server stopped")

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("loop cancelled")
            raise

    async def forgotten() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("forgotten cancelled")
            raise

    async with Lifecycle("demo") as life:
        life.spawn("server", server(), cancel_at_stop=False)
        life.spawn("loop", loop(), cancel_at_stop=False)
        life.spawn("forgotten", forgotten(), cancel_at_stop=False)
        life.spawn("early", asyncio.Event().wait())

        async def stop_server() -> None:
            seen.append(f"early cancelled first: {life.tasks['early'].cancelled()}")
            server_exit.set()
            await life.tasks["server"]

        async def stop_loop() -> None:
            assert not life.tasks["loop"].done()  # still running while the server stopped
            await life.cancel("loop")

        life.on_close(lambda: seen.append("last closer"))
        life.on_close(stop_loop)
        life.on_close(stop_server)
        life.stop()
    assert seen == [
        "early cancelled first: True", "server stopped", "loop cancelled", "last closer", "forgotten cancelled"
    ]
    assert life.failure is None  # a task that ended at shutdown is no failure


async def test_a_task_that_outlives_the_grace_is_logged_with_where_it_waits(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def stubborn_cleanup() -> None:
        await release.wait()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await stubborn_cleanup()   # what a driver does when it cancels a query on the server

    caplog.set_level(logging.WARNING)
    async with Lifecycle("demo", grace=0.2) as life:
        task = life.spawn("stubborn", stubborn())
        await asyncio.sleep(0)
    assert not task.done()
    [record] = [r for r in caplog.records if "did not stop" in r.getMessage()]
    assert "demo:stubborn did not stop within 0.2 s" in record.getMessage()
    assert "stubborn_cleanup" in record.getMessage()
    release.set()
    await asyncio.wait([task])
    assert task.cancelled()
