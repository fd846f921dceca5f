"""The ``cascade`` command line.

Every command turns a :class:`~cascade.errors.CascadeError` into a one-paragraph message on stderr
and exit status 2 — never a traceback. ``cascade policy check`` exits 1 when a policy is invalid
or a probe routes elsewhere than it expects.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cascade.errors import CascadeError, PolicyError

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        # Training has its own argument parser (and imports scikit-learn only when run).
        from cascade.training import main as train_main

        return _guarded(lambda: train_main(args[1:]))
    parser = _parser()
    ns = parser.parse_args(args)
    command: Command | None = getattr(ns, "command", None)
    if command is None:
        parser.print_help()
        return 2
    return _guarded(lambda: command(ns))


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except CascadeError as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Cost-aware model cascade router: send each LLM request to the cheapest "
        "tier that can handle it.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

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

    policy = commands.add_parser("policy", help="validate policies, print their JSON Schema")
    policy_commands = policy.add_subparsers(title="policy commands", metavar="COMMAND")
    check = policy_commands.add_parser(
        "check",
        help="validate policy files and run their probes",
        description="Validate each policy file and route its probes; exit 1 if anything fails.",
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(command=_policy_check)
    schema = policy_commands.add_parser("schema", help="print the policy files' JSON Schema")
    schema.add_argument("--out", type=Path, help="write it to this file instead of stdout")
    schema.set_defaults(command=_policy_schema)
    reference = policy_commands.add_parser(
        "reference", help="print the policy field reference (Markdown)"
    )
    reference.add_argument("--out", type=Path, help="write it to this file instead of stdout")
    reference.set_defaults(command=_policy_reference)

    commands.add_parser("train", help="train a router model (see: cascade train --help)")
    return parser


def _route(ns: argparse.Namespace) -> int:
    from cascade.routing import route

    messages: list[dict[str, Any]]
    if ns.messages is not None:
        messages = _read_messages(ns.messages)
    else:
        text = sys.stdin.read() if ns.prompt in (None, "-") else ns.prompt
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
    moved = ", ".join(f"{m.kind} ({m.text.strip()[:40]})" for m in decision.moved) or "nothing"
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
        ("moved", moved),
        ("policy", f"{decision.policy} @ {decision.policy_version}, workload {decision.workload}"),
    ]
    for key, value in rows:
        print(f"{key:<11} {value}")
    return 0


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


def _policy_check(ns: argparse.Namespace) -> int:
    from cascade.policy import load_policy
    from cascade.probes import run_probes
    from cascade.routing import Planner

    failed = 0
    for path in ns.files:
        try:
            planner = Planner(load_policy(path))
        except PolicyError as exc:
            failed += 1
            print(f"FAIL {path}: {len(exc.problems)} problem(s)")
            for problem in exc.problems:
                print(f"  {problem}")
            continue
        results = run_probes(planner)
        bad = [r for r in results if not r.passed]
        status = "FAIL" if bad else "ok  "
        print(
            f"{status} {path}: policy {planner.policy.name!r}, {len(planner.policy.tiers)} tiers, "
            f"{len(results) - len(bad)}/{len(results)} probes pass"
        )
        for r in results:
            mark = "ok  " if r.passed else "FAIL"
            detail = f"-> {r.actual}" if r.passed else f"expected {r.expected}, got {r.actual}"
            print(f"  {mark} {r.label!r} {detail} (confidence {r.confidence:.3f})")
            if not r.passed:
                print(f"       {r.reason}")
        failed += bool(bad)
    return 1 if failed else 0


def _policy_schema(ns: argparse.Namespace) -> int:
    from cascade.policy import policy_json_schema

    return _emit(json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n", ns.out)


def _policy_reference(ns: argparse.Namespace) -> int:
    from cascade.policy.reference import render_reference

    return _emit(render_reference(), ns.out)


def _emit(text: str, out: Path | None) -> int:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
    return 0
