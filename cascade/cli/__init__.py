"""The ``cascade`` command line.

Every command turns a :class:`~cascade.errors.CascadeError` into a one-paragraph message on stderr
and exit status 2 — never a traceback. ``cascade policy check`` exits 1 when a policy is invalid
or a probe routes elsewhere than it expects.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from cascade import __version__
from cascade.cli import (
    db,
    demo,
    keys,
    model,
    plan,
    policy,
    replay,
    report,
    route,
    serve,
    simulate,
    verify,
)
from cascade.errors import CascadeError, missing_extra

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
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
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc.name)  # an optional dependency: say which extra brings it
        if missing is None:
            raise
        print(f"cascade: error: {missing}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`cascade report --json | head`): stop quietly, as cat does.
        # Point stdout at /dev/null so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Cost-aware model cascade router: send each LLM request to the cheapest "
        "tier that can handle it.",
    )
    parser.add_argument("--version", action="version", version=f"cascade {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups = (demo, route, policy, model, verify, serve, simulate, db, keys, report, plan, replay)
    for group in groups:
        group.register(commands)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
