"""``cascade simulate-tier``: a simulated model server (OpenAI's and Anthropic's APIs) for demos
and tests."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate-tier`` command."""
    simulate = commands.add_parser(
        "simulate-tier",
        help="run a simulated model server (OpenAI and Anthropic APIs) for demos, tests and "
        "benchmarks",
        description="Serve /v1/chat/completions and Anthropic's /v1/messages (with its "
        "cache_control prompt caching; an anthropic/... tier's endpoint is the server's root, "
        "without /v1) like a real tier with no GPU or API key: "
        "latency, throughput, batching and saturation follow the serving equations on an H100 "
        "(1.5b, 7b) or a frontier API's pace (frontier); answers come from the shipped labeled "
        "data, right or wrong as the data says. Reported latencies and usage stay in real-time "
        "units whatever --time-scale is.",
    )
    simulate.add_argument("--profile", required=True, choices=["1.5b", "7b", "frontier"])
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, required=True)
    simulate.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per simulated second (0.01 runs 100x faster than real time)",
    )
    simulate.add_argument(
        "--max-concurrency",
        type=int,
        help="sequences in the running batch (default: the profile's, 64 or 512)",
    )
    simulate.add_argument(
        "--overload",
        choices=["queue", "429", "503"],
        help="beyond max concurrency: wait in a queue, or refuse with 429 or 503 (529 "
        "overloaded_error on /v1/messages) "
        "(default: queue for 1.5b/7b, 429 for frontier)",
    )
    simulate.add_argument(
        "--served-model-name",
        action="append",
        help="model name to answer to (repeatable; default: distill-1.5b, distill-7b, or gpt-4o "
        "and claude-sonnet-4-5 with and without their provider prefix)",
    )
    simulate.add_argument(
        "--metrics-names",
        choices=["vllm", "sglang"],
        default="vllm",
        help="export /metrics under vLLM's names (vllm:num_requests_waiting, ...) or SGLang's "
        "(sglang:num_queue_reqs, ...)",
    )
    simulate.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    simulate.set_defaults(command=_simulate)


def _simulate(ns: argparse.Namespace) -> int:
    from cascade.server.background import serve_forever
    from cascade.simulator.server import create_app
    from cascade.simulator.settings import SimulatorSettings

    settings = SimulatorSettings(
        profile=ns.profile,
        time_scale=ns.time_scale,
        max_concurrency=ns.max_concurrency,
        overload=ns.overload,
        models=tuple(ns.served_model_name or ()),
        metrics_names=ns.metrics_names,
    )
    serve_forever(create_app(settings), host=ns.host, port=ns.port, log_level=ns.log_level)
    return 0
