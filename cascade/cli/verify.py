"""``cascade verify``: P(a cheap answer is good enough) from the answer and its witnesses.

cascade verify --input FILE.jsonl [--model NAME|DIR]
cascade verify train --data ANSWERS... --out router_models/NAME
cascade verify eval --data ANSWERS... [--model NAME|DIR] [--split holdout|selection] [--per-task]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from cascade.cli.verify_eval import add_arguments as add_eval_arguments

DEFAULT_VERIFIER = "verifier-v2"
_BATCH = 512
_ANSWER_KEYS = ("content", "logprobs")
_INPUT_SHAPE = (
    'expected {"prompt": str or "messages": [chat messages], "answers": [candidate, witness, '
    '...]} where an answer is a string or {"content": str, "logprobs": [number, ...]}'
)
_MODEL_HELP = "a shipped verifier's name or a model folder (default: %(default)s)"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cascade verify`` and its ``train`` and ``eval`` actions."""
    verify = commands.add_parser(
        "verify",
        help='print {"confidence": x} (P(the candidate answer is good enough)) per JSONL line',
        description="Each line of --input holds a prompt (or chat messages) and answers: the "
        "first is the candidate, the rest its witnesses (other answers to the same prompt). "
        "Prints one confidence line per non-blank input line, in order. Only the candidate's "
        "logprobs are read.",
    )
    verify.add_argument(
        "--input", type=Path, metavar="FILE", help="JSONL: prompt + answers ('-': stdin)"
    )
    verify.add_argument("--model", default=DEFAULT_VERIFIER, metavar="NAME|DIR", help=_MODEL_HELP)
    verify.set_defaults(command=_verify, verify_parser=verify)
    actions = verify.add_subparsers(title="actions", metavar="ACTION")

    train = actions.add_parser(
        "train",
        help="train a verifier folder from answers files",
        description="Fit every candidate setting on the fit tasks, choose on the selection "
        "tasks, measure on the holdout tasks (splits by task, never mixed), export to ONNX, "
        "check parity and write DIR/model.onnx + manifest.json.",
    )
    train.add_argument("--data", nargs="+", type=Path, required=True, metavar="FILE")
    train.add_argument("--out", type=Path, required=True, metavar="DIR")
    train.add_argument("--name", help="model name (default: the --out folder's name)")
    train.add_argument("--seed", type=int, default=0)
    for split in ("fit", "selection", "holdout"):
        train.add_argument(
            f"--{split}-tasks", nargs="+", metavar="TASK", help=f"default: the {split} tasks "
            "of cascade.training.verifier_train"
        )  # fmt: skip
    train.set_defaults(command=_train)

    evaluate = actions.add_parser(
        "eval",
        help="the verify cascade's cost-quality numbers beside majority, prompt-only, random",
        description="Accept the candidate when the confidence clears a threshold, else pay the "
        "strong tier; witnesses are always paid. Prints AUROC (against 'the candidate is "
        "correct'), APGR over the escalated share, APGR over total cost and the cost of 80%% "
        "and 95%% of the quality gap, overall and per task, beside route+verify (skip the "
        "cheap tier where the prompt scorer expects it to fail), the majority vote, "
        "prompt-only, random and the oracle; and whether keeping the majority's answer beats "
        "keeping the first. Same as cascade eval --kind verifier.",
    )
    evaluate.add_argument(
        "--data",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="answers files, or labeled traffic whose rows carry answers",
    )
    evaluate.add_argument("--model", default=DEFAULT_VERIFIER, metavar="NAME|DIR", help=_MODEL_HELP)
    add_eval_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print machine-readable results")
    evaluate.set_defaults(command=_eval)


def _verify(ns: argparse.Namespace) -> int:
    if ns.input is None:
        ns.verify_parser.print_usage(sys.stderr)
        print(
            "cascade verify: error: give --input FILE, or an action (train, eval)", file=sys.stderr
        )
        return 2
    from cascade.model.verifier import OnnxVerifier

    items = read_verifications(ns.input)
    verifier = OnnxVerifier(ns.model, device="cpu")
    for i in range(0, len(items), _BATCH):
        for value in verifier.confidence_batch(items[i : i + _BATCH]):
            sys.stdout.write(json.dumps({"confidence": round(value, 6)}) + "\n")
    return 0


def read_verifications(path: Path) -> list[Any]:
    """The :class:`~cascade.model.verifier.Verification` of each non-blank JSONL line.

    A bad line raises :class:`~cascade.errors.LabeledDataError` naming ``file:line``, what is
    wrong and the shape a line must have.
    """
    from cascade.core.prompt import prepare_prompt
    from cascade.errors import CascadeError, LabeledDataError
    from cascade.model.verifier import Verification

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        lines = text.split("\n")
    except (OSError, UnicodeError) as exc:
        raise LabeledDataError(f"{path}: cannot read verifications: {exc}") from exc
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"

        def bad(problem: str, where: str = where) -> LabeledDataError:
            return LabeledDataError(f"{where}: {problem}; {_INPUT_SHAPE}")

        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad(f"not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise bad(f"a JSON {type(row).__name__}, not an object")
        if isinstance(row.get("prompt"), str):
            prompt = row["prompt"]
        elif isinstance(row.get("messages"), list):
            try:
                prompt = prepare_prompt(row["messages"]).scoring_text
            except CascadeError as exc:
                raise bad(f"messages: {exc}") from None
        else:
            raise bad("no string 'prompt' and no list 'messages'")
        answers = row.get("answers")
        if not isinstance(answers, list) or not answers:
            raise bad("'answers' must be a non-empty list")
        parsed = [_answer(a, f"answers[{i}]", bad) for i, a in enumerate(answers)]
        candidate, logprobs = parsed[0]
        items.append(Verification(prompt, candidate, tuple(t for t, _ in parsed[1:]), logprobs))
    return items


def _answer(value: object, field: str, bad: Any) -> tuple[str, tuple[float, ...] | None]:
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        raise bad(f"{field}: expected a string or an object, got {type(value).__name__}")
    if unknown := sorted(set(value) - set(_ANSWER_KEYS)):
        raise bad(f"{field}: unknown key {unknown[0]!r} (allowed: content, logprobs)")
    if not isinstance(value.get("content"), str):
        raise bad(f"{field}.content: missing or not a string")
    logprobs = value.get("logprobs")
    if logprobs is None:
        return value["content"], None
    numeric = isinstance(logprobs, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in logprobs
    )
    if not numeric:
        raise bad(f"{field}.logprobs: must be a list of numbers (token logprobs) or null")
    return value["content"], tuple(float(v) for v in logprobs)


def _train(ns: argparse.Namespace) -> int:
    from cascade.training import verifier_train as vt

    result = vt.train_verifier(
        ns.data,
        ns.out,
        name=ns.name or ns.out.resolve().name,
        fit_tasks=ns.fit_tasks or vt.FIT_TASKS,
        selection_tasks=ns.selection_tasks or vt.SELECTION_TASKS,
        holdout_tasks=ns.holdout_tasks or vt.HOLDOUT_TASKS,
        seed=ns.seed,
        created_by=_command_line(ns),
    )
    printed: dict[str, Any] = {
        "sha256": result.manifest.sha256,
        "chosen": result.chosen.label,
        "selection_cost_apgr": {s.choice.label: s.cost_apgr for s in result.selection},
        **dataclasses.asdict(result.manifest.metrics),
        "parity_max_abs_diff": result.manifest.parity.max_abs_diff,
    }
    print(json.dumps(printed, indent=2))
    return 0


def _command_line(ns: argparse.Namespace) -> str:
    """The ``cascade verify train`` command line that rebuilds this folder."""
    words = ["cascade", "verify", "train", "--data", *map(str, ns.data), "--out", str(ns.out)]
    for split in ("fit", "selection", "holdout"):
        if tasks := getattr(ns, f"{split}_tasks"):
            words += [f"--{split}-tasks", *tasks]
    if ns.name:
        words += ["--name", ns.name]
    return shlex.join([*words, "--seed", str(ns.seed)])


def _eval(ns: argparse.Namespace) -> int:
    from cascade.cli.verify_eval import evaluate

    return evaluate(ns, "cascade verify eval")
