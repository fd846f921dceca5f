"""A scripted engine replica for tests: it answers chat calls (as the scripted tier does) and
serves the metrics page the test chooses, so the engine's load is whatever the test says.

    engine = EnginePage(ScriptedTier("a"), page=vllm_page(waiting=0))
    with serving(engine.app()) as url:
        engine.page = vllm_page(waiting=12)  # the engine is now queueing
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.upstreams import ScriptedTier

__all__ = ["EnginePage", "vllm_page"]


def vllm_page(*, running: int = 0, waiting: int = 0, kv_usage: float = 0.1) -> str:
    """A vLLM V1 metrics page (one engine) with the gauges the proxy reads, among others."""
    labels = 'model_name="distill-1.5b",engine="0"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {running}.0\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {waiting}.0\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} {kv_usage}\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{{{labels}}} 12345.0\n"
    )


@dataclass
class EnginePage:
    """What the replica's ``metrics_path`` serves next: ``page`` with ``status``, after
    ``delay_s``; ``reads`` counts the reads."""

    tier: ScriptedTier
    page: str
    status: int = 200
    delay_s: float = 0.0
    metrics_path: str = "/metrics"
    reads: int = 0

    def app(self) -> Starlette:
        """The replica as an ASGI app: the scripted tier's chat route and the metrics page."""
        routes = [*self.tier.app().routes, Route(self.metrics_path, self._metrics)]
        return Starlette(routes=routes)

    async def _metrics(self, request: Request) -> Response:
        self.reads += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return PlainTextResponse(self.page, status_code=self.status)
