"""``cascade policy check|schema|reference|diff``: validate policies, document their fields, and
say what a change to one does (field by field, and replayed on the ledger's traffic)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cascade.errors import PolicyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy`` command group."""
    policy = commands.add_parser("policy", help="validate policies, print their JSON Schema")
    policy_commands = policy.add_subparsers(
        title="policy commands", metavar="COMMAND", required=True
    )
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
    diff = policy_commands.add_parser(
        "diff",
        help="what changes from OLD to NEW, field by field, and (--url) its replayed effect",
        description="Print every field that differs between two policies (thresholds, tiers, "
        "models, workloads, learning, other; tiers matched by name). With --url, replay NEW "
        "on the requests the ledger logged under OLD's name (cascade replay) and print its "
        "estimated cost, cost per useful token, escalation and good-answer rates beside what "
        "those requests measured; exit 1 when the data cannot support the estimate.",
    )
    diff.add_argument("old", type=Path, metavar="OLD", help="the policy in force (file or name)")
    diff.add_argument("new", type=Path, metavar="NEW", help="the candidate (file or name)")
    diff.add_argument("--url", help="the ledger to replay NEW on (default: no replay)")
    diff.add_argument(
        "--since", default="7d", help="with --url: the window replayed, as cascade replay's"
    )
    diff.add_argument("--tenant", help="with --url: only this tenant's requests")
    diff.add_argument("--json", action="store_true", help="print JSON")
    diff.set_defaults(command=_policy_diff)


def describe_problems(path: object, error: PolicyError) -> str:
    """A policy's problems as ``cascade policy check`` prints them: a FAIL line, then one
    located line per problem."""
    lines = [f"FAIL {path}: {len(error.problems)} problem(s)"]
    lines += [f"  {problem}" for problem in error.problems]
    return "\n".join(lines)


def check_policies(names: Sequence[str]) -> bool:
    """Load each policy (a file or a shipped name) and print what is wrong with those that do
    not load, to stderr; True when all load. For commands that need valid policies to start."""
    from importlib.util import find_spec

    from cascade.errors import CascadeError, missing_extra
    from cascade.policy import load_policy
    from cascade.resources import policy_path

    ok = True
    for name in names:
        try:
            policy = load_policy(policy_path(name))
            if any(t.kind == "api" for t in policy.tiers) and find_spec("litellm") is None:
                missing = missing_extra("litellm")
                assert missing is not None
                raise missing
        except PolicyError as exc:
            ok = False
            print(describe_problems(name, exc), file=sys.stderr)
        except CascadeError as exc:
            ok = False
            print(f"FAIL {name}: {exc}", file=sys.stderr)
    return ok


def _policy_check(ns: argparse.Namespace) -> int:
    from cascade.core.planner import Planner
    from cascade.core.probes import run_probes
    from cascade.policy import load_policy

    failed = 0
    for path in ns.files:
        try:
            planner = Planner(load_policy(path))
        except PolicyError as exc:
            failed += 1
            print(describe_problems(path, exc))
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


def _policy_diff(ns: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cascade.policy import load_policy
    from cascade.policy.diff import diff_policies, format_diff

    old, new = load_policy(ns.old), load_policy(ns.new)
    changes = diff_policies(old, new)
    replayed = None
    if ns.url is not None:
        from cascade.cli.replay import _since  # the window as cascade replay reads it
        from cascade.ledger.replay import replay_policy

        since = _since(ns.since)
        replayed = replay_policy(ns.url, new, since=since, tenant=ns.tenant, logged_policy=old.name)
    if ns.json:
        from cascade.cli.replay import replay_json

        data = {
            "old": {"source": old.source, "name": old.name, "version": old.fingerprint},
            "new": {"source": new.source, "name": new.name, "version": new.fingerprint},
            "changes": [asdict(change) for change in changes],
            "replay": None if replayed is None else replay_json(replayed),
        }
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(format_diff(old, new, changes)))
        if replayed is not None:
            from cascade.cli.replay import format_replay

            print(f"\nreplayed: NEW on the requests logged under policy {old.name!r}")
            print(format_replay(replayed))
    return 1 if replayed is not None and not replayed.estimate.supported else 0


def _emit(text: str, out: Path | None) -> int:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
    return 0
