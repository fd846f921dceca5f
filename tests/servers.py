"""Simulated tiers on loopback for tests: start one, get its URL, always shut it down.

    with running_tier(profile="1.5b", time_scale=0.01, max_concurrency=8) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")

``url`` is the server's root (``http://127.0.0.1:PORT``): the OpenAI base URL is ``url + "/v1"``,
``/metrics`` and ``/health`` hang off the root. The server runs under uvicorn in a background
thread on a free port; the helper polls until it accepts requests (never sleeps a fixed time)
and stops it on exit, even when the test fails. The shipped labeled data is loaded once per test
process and shared by every tier started here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager

import anyio.to_thread
from starlette.types import ASGIApp

from cascade.server.background import serve_in_thread
from cascade.simulator.engine import Clock
from cascade.simulator.labels import LabelTable
from cascade.simulator.profiles import Overload
from cascade.simulator.server import create_app
from cascade.simulator.settings import SimulatorSettings

__all__ = ["async_running_tier", "running_tier", "serving", "shared_labels"]

_START_TIMEOUT_S = 10.0


@functools.cache
def shared_labels() -> LabelTable:
    """The shipped labeled data, loaded once per test process."""
    return LabelTable.load()


@contextmanager
def running_tier(
    profile: str = "1.5b",
    *,
    time_scale: float = 0.01,
    max_concurrency: int | None = None,
    overload: Overload | None = None,
    models: tuple[str, ...] = (),
    clock: Clock | None = None,
) -> Iterator[str]:
    """Run a simulated tier on ``127.0.0.1``, port 0; yield its root URL; stop it on exit.
    Pass ``clock`` (built with the same ``time_scale``) to move simulated time from the test."""
    settings = SimulatorSettings(
        profile=profile,
        time_scale=time_scale,
        max_concurrency=max_concurrency,
        overload=overload,
        models=models,
    )
    with serving(create_app(settings, labels=shared_labels(), clock=clock)) as url:
        yield url


def serving(app: ASGIApp, *, port: int = 0) -> AbstractContextManager[str]:
    """Run any ASGI app under uvicorn on a loopback port (default: a free one); yield its base
    URL; stop it."""
    return serve_in_thread(app, name="test-server", port=port)


@asynccontextmanager
async def async_running_tier(
    profile: str = "1.5b",
    *,
    time_scale: float = 0.01,
    max_concurrency: int | None = None,
    overload: Overload | None = None,
    models: tuple[str, ...] = (),
) -> AsyncIterator[str]:
    """:func:`running_tier` for async tests: start and stop happen off the event loop."""
    manager = running_tier(
        profile,
        time_scale=time_scale,
        max_concurrency=max_concurrency,
        overload=overload,
        models=models,
    )
    url = await anyio.to_thread.run_sync(manager.__enter__)
    try:
        yield url
    finally:
        await anyio.to_thread.run_sync(manager.__exit__, None, None, None)


def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
