"""The process runtime: ordered startup and shutdown, job failures, draining, listeners."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import timedelta

import pytest

from exporter.runtime import Jobs, ListenError, Runtime, StartupFailed, bind


async def test_startup_in_order_shutdown_in_reverse_and_main_exit_code() -> None:
    rt = Runtime(grace=1.0)
    seen: list[str] = []

    def step(name: str):
        async def run() -> None:
            seen.append(name)

        return run

    for name in ("pools", "metrics", "api"):
        rt.on_startup(name, step(f"start {name}"))
        rt.on_shutdown(name, step(f"stop {name}"))

    async def main() -> int:
        seen.append("main")
        return 3

    assert await rt.run(main) == 3
    assert seen == [
        "start pools", "start metrics", "start api", "main",
        "stop api", "stop metrics", "stop pools",
    ]


async def test_a_failed_startup_step_stops_the_rest_and_still_shuts_down() -> None:
    rt = Runtime(grace=1.0)
    seen: list[str] = []

    async def refuse() -> None:
        raise ListenError("cannot listen on 127.0.0.1:1: address already in use")

    async def never() -> None:
        seen.append("started after the failure")

    async def close() -> None:
        seen.append("closed")

    rt.on_startup("api", refuse)
    rt.on_startup("later", never)
    rt.on_shutdown("pools", close)
    with pytest.raises(ListenError, match="address already in use"):
        await rt.run()
    assert seen == ["closed"]


async def test_fail_from_a_background_task_ends_the_run_with_that_error() -> None:
    rt = Runtime(grace=1.0)

    async def opener() -> None:
        await asyncio.sleep(0.05)
        rt.fail(StartupFailed("cannot start: run `wfa migrate`"))

    rt.on_startup("exporter", lambda: rt.start_soon(opener, "opener"))
    with pytest.raises(StartupFailed, match="wfa migrate"):
        await asyncio.wait_for(rt.run(), 5)
    assert rt.code == 1


async def test_a_failing_job_is_counted_and_logged_once_per_streak(caplog) -> None:
    jobs = Jobs()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"boom {calls}")

    jobs.every("poll", flaky, timedelta(milliseconds=50))
    caplog.set_level(logging.INFO, logger="exporter.runtime")
    jobs.start()
    try:
        for _ in range(100):
            if calls >= 5:
                break
            await asyncio.sleep(0.02)
    finally:
        await jobs.drain(1.0)
    assert jobs.failures["poll"] == 3
    failed = [r for r in caplog.records if "poll job failed" in r.getMessage()]
    # A bug is logged every time, with its traceback; the recovery once.
    assert len(failed) == 3 and all(r.exc_info for r in failed)
    assert any("poll job works again" in r.getMessage() for r in caplog.records)


async def test_drain_waits_for_a_run_in_flight_and_cancels_what_outlasts_the_grace() -> None:
    jobs = Jobs()
    finished: list[str] = []
    started = asyncio.Event()

    async def batch(name: str, seconds: float) -> None:
        started.set()
        await asyncio.sleep(seconds)
        finished.append(name)

    jobs.every("short", lambda: batch("short", 0.3), timedelta(hours=1), _now())
    jobs.start()
    await asyncio.wait_for(started.wait(), 5)
    await jobs.drain(2.0)
    assert finished == ["short"], "the run in flight finished instead of being cancelled"

    jobs = Jobs()
    started.clear()
    jobs.every("long", lambda: batch("long", 30), timedelta(hours=1), _now())
    jobs.start()
    await asyncio.wait_for(started.wait(), 5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await jobs.drain(0.2)
    assert loop.time() - began < 2
    assert "long" not in finished
    assert not jobs.running


def test_bind_names_the_address_and_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ListenError) as err:
            bind(listen, "metrics.listen")
    assert str(err.value) == f"cannot listen on {listen} (metrics.listen): address already in use"
    sock = bind("127.0.0.1:0")
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
