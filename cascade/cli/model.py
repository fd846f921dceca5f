"""Router model commands: ``cascade train``, ``eval``, ``score`` and ``calibrate``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from cascade.cli.labeled_scores import labeled_confidence, read_prompts
from cascade.cli.verify_eval import VERIFIER_OPTIONS
from cascade.cli.verify_eval import add_arguments as add_verifier_eval_arguments

DEFAULT_MODEL = "prompt-features-v2"
DEFAULT_VERIFIER = "verifier-v2"
_BATCH = 512


_MODEL_HELP = "a shipped model's name or a model folder (default: %(default)s)"
_KIND_MODEL_HELP = (
    f"a shipped model's name or a model folder (default: the --policy's own scorer or "
    f"verifier, else {DEFAULT_MODEL}, or {DEFAULT_VERIFIER} with --kind verifier)"
)
_DATA_HELP = (
    "labeled-traffic JSONL (--kind verifier: answers files, or labeled traffic whose rows "
    "carry answers: [candidate, witness, ...])"
)


def _add_kind(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        choices=("scorer", "verifier"),
        default="scorer",
        help="scorer: the prompt scorer routes before any call; verifier: the verify step "
        "judges the cheap answer with its witnesses (default: %(default)s)",
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the router model commands."""
    train = commands.add_parser(
        "train",
        help="train a router model folder from labeled traffic",
        description="Fit the prompt-features confidence model (or adapt --base to your rows), "
        "export it to ONNX, check parity, measure it and write DIR/model.onnx + manifest.json. "
        "Rows from `cascade export` carry the scorer's features instead of a prompt: they are "
        "used when their feature_version is the one the model reads (refused otherwise). A row "
        "with a propensity counts 1/propensity (importance weighting, so explored requests "
        "stand for the choices they were drawn against; weights scaled to a mean of 1).",
    )
    train.add_argument("--data", nargs="+", type=Path, required=True, metavar="FILE",
                       help="labeled-traffic JSONL (prompts, or scorer features)")  # fmt: skip
    train.add_argument(
        "--dev", nargs="*", type=Path, default=[], metavar="FILE", help="measured only"
    )
    train.add_argument(
        "--holdout-tasks",
        nargs="*",
        default=None,
        metavar="TASK",
        help="tasks kept out of fitting and measured (default: six MMLU subjects; "
        "none given: no holdout)",
    )
    train.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the model folder to write"
    )
    train.add_argument("--name", help="model name (default: the --out folder's name)")
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the fit (default: %(default)s; same seed, "
        "same data, same toolchain: the same bytes)",
    )
    train.add_argument("--base", metavar="MODEL", help="adapt this model (name or folder) to "
                       "--data, e.g. prompt-features-v2 to `cascade export` rows")  # fmt: skip
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(command=_train)

    evaluate = commands.add_parser(
        "eval",
        help="cost-quality curve of a model on labeled traffic, beside random and oracle",
        description="Score every prompt of the labeled traffic, sweep the threshold and print "
        "AUROC, APGR (the area under the share of the quality gap recovered against the share "
        "of calls sent to the strong tier; random 0.5) and the strong-call share needed for "
        "50/80/95% of the gap, per file and task, beside random and the oracle. With --kind "
        "verifier: the verify cascade on answers (cheap answer + witnesses, always paid; "
        "escalate below the threshold) beside route+verify, the majority vote, prompt-only, "
        "random and the oracle, as cascade verify eval prints it.",
    )
    evaluate.add_argument("--data", nargs="+", type=Path, required=True, metavar="FILE",
                          help=_DATA_HELP)  # fmt: skip
    _add_kind(evaluate)
    evaluate.add_argument("--model", metavar="NAME|DIR", help=_KIND_MODEL_HELP)
    evaluate.add_argument("--plot", type=Path, metavar="PNG", help="draw the PGR and cost curves")
    evaluate.add_argument("--json", action="store_true", help="print machine-readable results")
    add_verifier_eval_arguments(evaluate, note=" (--kind verifier)")
    evaluate.set_defaults(command=_eval)

    score = commands.add_parser(
        "score",
        help='print {"confidence": x} for each line of a JSONL file of prompts or messages',
        description='Read JSONL lines with "prompt" (a string) or "messages" (OpenAI chat '
        'messages) and print one {"confidence": x} line per input line, in order: the model\'s '
        "estimate that the cheap tier's answer will be good enough.",
    )
    score.add_argument(
        "--input", type=Path, required=True, metavar="FILE", help="the JSONL file ('-': stdin)"
    )
    score.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|DIR", help=_MODEL_HELP)
    score.set_defaults(command=_score)

    calibrate = commands.add_parser(
        "calibrate",
        help="pick a tier threshold that meets a target on your labeled traffic",
        description="Find the confidence threshold that keeps at most SHARE of the traffic "
        "off the cheap tier (--max-strong-share) or recovers at least PGR of the quality gap "
        "(--min-pgr) on the labeled traffic; with --write, set it in the policy file. With "
        "--kind verifier: the verify threshold (escalate at most SHARE of the candidates, or "
        "recover PGR with the witnesses paid), written as tiers[NAME].verify.threshold.",
    )
    calibrate.add_argument("--data", nargs="+", type=Path, required=True, metavar="FILE",
                           help=_DATA_HELP)  # fmt: skip
    _add_kind(calibrate)
    calibrate.add_argument("--model", metavar="NAME|DIR", help=_KIND_MODEL_HELP)
    calibrate.add_argument(
        "--witnesses",
        type=int,
        metavar="N",
        help="(--kind verifier) witnesses per candidate, as the policy's verify block gathers "
        "them (default: 2 of an answers file's other_cheap, all of a traffic row's answers)",
    )
    target = calibrate.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--max-strong-share",
        type=float,
        metavar="SHARE",
        help="the most traffic (0..1) that may go past the cheap tier",
    )
    target.add_argument(
        "--min-pgr", type=float, metavar="PGR", help="the least share (0..1) of the quality gap"
    )
    calibrate.add_argument("--policy", type=Path, metavar="FILE", help="the policy to write into")
    calibrate.add_argument("--tier", metavar="NAME", help="the tier whose threshold to set")
    calibrate.add_argument("--write", action="store_true", help="write the threshold into --policy")
    calibrate.set_defaults(command=_calibrate)


def _train(ns: argparse.Namespace) -> int:
    from cascade.training.traffic import load_labeled
    from cascade.training.train import DEFAULT_HOLDOUT_TASKS, train_model

    holdout = ns.holdout_tasks
    if holdout is None:
        tasks = {e.task for e in load_labeled(ns.data, stored_features=True)}
        holdout = DEFAULT_HOLDOUT_TASKS if set(DEFAULT_HOLDOUT_TASKS) <= tasks else []
        if not holdout:
            print(
                "holdout: none (the default holdout, six MMLU subjects of the shipped data, is "
                "not in this data; name tasks to hold out with --holdout-tasks)",
                file=sys.stderr,
            )
    manifest, adaptation = train_model(
        ns.data,
        ns.out,
        name=ns.name or ns.out.resolve().name,
        seed=ns.seed,
        holdout_tasks=holdout,
        dev_data=ns.dev,
        base=ns.base,
        created_by=_command_line(ns),
    )
    result: dict[str, Any] = {"sha256": manifest.sha256, **dataclasses.asdict(manifest.metrics)}
    result["parity_max_abs_diff"] = manifest.parity.max_abs_diff
    if adaptation is not None:
        result["adaptation"] = dataclasses.asdict(adaptation)
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        print(_trained(ns, manifest.metrics, adaptation))
    return 0


def _trained(ns: argparse.Namespace, metrics: Any, adaptation: Any) -> str:
    """What ``cascade train`` did, in words: the choice it made and the numbers behind it."""
    lines = [f"wrote {ns.out}/model.onnx and manifest.json"]
    if adaptation is not None:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in adaptation.cv_apgr.items())
        if adaptation.alpha is None:
            lines.append(
                f"kept {ns.base} unchanged: no correction beat it in cross-validation on these "
                f"rows (mean APGR by correction strength: {scores}); more rows, or rows whose "
                "outcomes differ more, may change that"
            )
        else:
            lines.append(
                f"adapted {ns.base} with correction strength {adaptation.alpha:g}, the best "
                f"in cross-validation (mean APGR: {scores})"
            )
    for key, value in dataclasses.asdict(metrics).items():
        if value is not None and not isinstance(value, list | tuple | dict):
            lines.append(f"  {key:<24} {value}")
    return "\n".join(lines)


def _command_line(ns: argparse.Namespace) -> str:
    """The ``cascade train`` command line that rebuilds this folder."""
    words = ["cascade", "train", "--data", *map(str, ns.data), "--out", str(ns.out)]
    if ns.dev:
        words += ["--dev", *map(str, ns.dev)]
    if ns.holdout_tasks is not None:
        words += ["--holdout-tasks", *ns.holdout_tasks]
    if ns.base:
        words += ["--base", ns.base]
    if ns.name:
        words += ["--name", ns.name]
    return shlex.join([*words, "--seed", str(ns.seed)])


def _eval(ns: argparse.Namespace) -> int:
    from cascade.training.evaluation import oracle_confidence, random_confidence, report

    if ns.kind == "verifier":
        if ns.plot:
            print("cascade eval: error: --plot draws a scorer's curves; not with --kind verifier",
                  file=sys.stderr)  # fmt: skip
            return 2
        from cascade.cli.verify_eval import evaluate

        ns.model = ns.model or DEFAULT_VERIFIER
        return evaluate(ns, "cascade eval")
    if given := [o for o in VERIFIER_OPTIONS if getattr(ns, o) not in (None, False)]:
        print(f"cascade eval: error: --{given[0].replace('_', '-')} is for --kind verifier",
              file=sys.stderr)  # fmt: skip
        return 2
    ns.model = ns.model or DEFAULT_MODEL
    confidence, outcomes = labeled_confidence(ns.data, ns.model)
    routers = {
        "model": confidence,
        "random": random_confidence(outcomes),
        "oracle": oracle_confidence(outcomes),
    }
    reports = {name: report(c, outcomes) for name, c in routers.items()}
    result = {
        "model": str(ns.model),
        "data": [str(p) for p in ns.data],
        "rows": len(confidence),
        "quality_all_weak": round(float(outcomes.weak_score.mean()), 4),
        "quality_all_strong": round(float(outcomes.strong_score.mean()), 4),
        "cost_all_weak_ratio": round(
            float(outcomes.weak_cost.sum() / max(outcomes.strong_cost.sum(), 1e-300)), 4
        ),
        **{name: r.as_dict() for name, r in reports.items()},
    }
    if ns.plot:
        _plot(routers, outcomes, ns.plot, title=f"{ns.model} on {ns.data[0].name}")
        result["plot"] = str(ns.plot)
    if ns.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['rows']} rows; quality all-weak {result['quality_all_weak']}, "
        f"all-strong {result['quality_all_strong']}; all-weak costs "
        f"{result['cost_all_weak_ratio']:.1%} of all-strong"
    )
    print(f"{'router':8} {'AUROC':>6} {'APGR':>6}   CPT(50%)        CPT(80%)        CPT(95%)")
    for name, r in reports.items():
        cells = "  ".join(f"{s:5.1%} @{c:6.1%}" for s, c in r.cpt.values())
        roc = "  -   " if r.auroc is None else f"{r.auroc:6.3f}"
        print(f"{name:8} {roc} {r.apgr:6.3f}   {cells}")
    print("CPT(p): share of calls sent to the strong tier @ cost relative to all-strong")
    if ns.plot:
        print(f"plot: {ns.plot}")
    return 0


def _score(ns: argparse.Namespace) -> int:
    from cascade.model.scorer import OnnxScorer

    texts = read_prompts(ns.input)
    scorer = OnnxScorer(ns.model, device="cpu")
    out = sys.stdout
    for i in range(0, len(texts), _BATCH):
        for value in scorer.score_batch(texts[i : i + _BATCH]):
            out.write(json.dumps({"confidence": round(value, 6)}) + "\n")
    return 0


def _calibrate(ns: argparse.Namespace) -> int:
    from cascade.cli.calibration import calibrate, verified_confidence

    if ns.kind == "verifier":
        if ns.witnesses is not None and ns.witnesses < 1:
            print("cascade calibrate: error: --witnesses must be >= 1", file=sys.stderr)
            return 2
        ns.model = ns.model or _policy_model(ns.policy, "verifier") or DEFAULT_VERIFIER
        return calibrate(ns, lambda: verified_confidence(ns.data, ns.model, ns.witnesses))
    if ns.witnesses is not None:
        print("cascade calibrate: error: --witnesses is for --kind verifier", file=sys.stderr)
        return 2
    ns.model = ns.model or _policy_model(ns.policy, "scorer") or DEFAULT_MODEL
    return calibrate(ns, lambda: labeled_confidence(ns.data, ns.model))


def _policy_model(policy: Path | None, kind: str) -> str | None:
    """The model the policy itself uses (its ``scorer`` or ``verifier``): a threshold written
    into a policy must be calibrated on the model that will be compared with it."""
    if policy is None:
        return None
    from cascade.policy.loading import load_policy

    loaded = load_policy(policy)
    return loaded.verifier.model if kind == "verifier" else loaded.scorer.model


def _plot(routers: dict[str, Any], outcomes: Any, path: Path, title: str) -> None:
    """PGR and cost against the strong share for each router, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade.training.evaluation import cost_quality_curve

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, confidence in routers.items():
        curve = cost_quality_curve(confidence, outcomes)
        style = {"random": "--", "oracle": ":"}.get(name, "-")
        left.plot(curve.strong_share, curve.pgr, style, label=f"{name} (APGR {curve.apgr:.3f})")
        right.plot(curve.strong_share, curve.cost_ratio, style, label=name)
    left.set(xlabel="share of calls to the strong tier", ylabel="PGR", title=title)
    right.set(xlabel="share of calls to the strong tier", ylabel="cost / all-strong cost")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
