"""``cascade route``: print where a prompt would go, and why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cascade.errors import CascadeError

_PLACES = {
    "system": "a system message after the stable prefix",
    "user": "the start of the user's message",
    "keep": "left in place",
}
"""Where ``prompt.volatile`` puts the volatile lines, as ``cascade route`` says it."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``route`` command."""
    route = commands.add_parser(
        "route",
        help="print where a prompt would be routed, and why",
        description="Print the routing decision for one prompt: tier, model, confidence, reason, "
        "estimated cost and prefix hash. Pure CPU: no model is called.",
    )
    route.add_argument("prompt", nargs="?", help="the user's prompt ('-' or absent: read stdin)")
    route.add_argument("--system", help="a system prompt to send before the user's prompt")
    route.add_argument(
        "--messages", type=Path, help="a JSON file with OpenAI-style messages (instead of a prompt)"
    )
    route.add_argument("--policy", default="default", help="policy file or shipped policy name")
    route.add_argument("--workload", help="workload class (default: the policy's default)")
    route.add_argument("--max-tokens", type=int, help="the request's max_tokens, for the estimate")
    route.add_argument("--json", action="store_true", help="print the decision as JSON")
    route.set_defaults(command=_route)


def _route(ns: argparse.Namespace) -> int:
    from cascade.core.planner import route

    messages: list[dict[str, Any]]
    if ns.messages is not None:
        if ns.prompt is not None or ns.system is not None:
            raise CascadeError("give either --messages FILE or a prompt (with --system), not both")
        messages = _read_messages(ns.messages)
    else:
        text = sys.stdin.read() if ns.prompt in (None, "-") else ns.prompt
        if not text.strip():
            raise CascadeError("the prompt is empty; give the user's text (or '-' to read stdin)")
        messages = [{"role": "user", "content": text}]
        if ns.system:
            messages.insert(0, {"role": "system", "content": ns.system})
    decision = route(messages, policy=ns.policy, workload=ns.workload, max_tokens=ns.max_tokens)
    if ns.json:
        out = decision.to_dict()
        out.pop("messages")
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    cost = decision.estimated_cost_usd
    where = _PLACES[decision.volatile_placement]
    found = ", ".join(f"{m.kind} ({m.text.strip()[:40]})" for m in decision.moved)
    moved = f"{found} -> {where}" if found else "nothing moved"
    rows = [
        ("tier", f"{decision.tier}  ({decision.model}, {decision.kind})"),
        ("confidence", f"{decision.confidence:.3f}"),
        ("reason", decision.reason),
        (
            "est. cost",
            ("unknown (priced at call time)" if cost is None else f"${cost:.8f}")
            + f"  ({decision.prompt_tokens} prompt"
            + f" + {decision.expected_output_tokens} output tokens)",
        ),
        ("prefix", f"{decision.prefix_hash}  ({decision.prefix_tokens} stable tokens)"),
        ("volatile", moved),
        ("history", _history(decision.history_trimmed, decision.workload)),
        ("policy", f"{decision.policy} @ {decision.policy_version}, workload {decision.workload}"),
    ]
    for key, value in rows:
        print(f"{key:<11} {value}")
    return 0


def _history(trimmed: str | None, workload: str) -> str:
    """What the workload's history cap (``max_history_tokens``) dropped, in words."""
    if trimmed is None:
        return "sent whole"
    return f"oldest turns trimmed ({trimmed}) by workload {workload}'s max_history_tokens"


def _read_messages(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CascadeError(f"{path}: cannot read messages: {exc}") from exc
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list):
        raise CascadeError(f"{path}: expected a JSON list of messages or an object with 'messages'")
    return data
