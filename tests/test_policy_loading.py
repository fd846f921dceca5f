"""Policy files: validation, error messages that point at the line, schema and reference."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cascade.errors import PolicyError
from cascade.policy import load_policy, parse_policy, policy_json_schema
from cascade.policy.reference import render_reference
from cascade.resources import resource_dir
from tests.conftest import TWO_TIERS

WritePolicy = Callable[..., Path]


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="policies/x.yaml")
    return [str(p) for p in caught.value.problems]


def test_shipped_policies_validate() -> None:
    """Every policy shipped in policies/ loads without error."""
    files = sorted(resource_dir("policies").glob("*.yaml"))
    assert files
    for path in files:
        assert load_policy(path).tiers


def test_default_policy_by_name() -> None:
    """The shipped default policy is found by name and has its three tiers in cost order."""
    policy = load_policy("default")
    assert [t.name for t in policy.tiers] == ["small", "medium", "frontier"]
    assert policy.tier("small").overflow == "frontier"


def test_unknown_key_names_file_line_key_and_suggestion() -> None:
    """A misspelt key is reported as file:line: path: unknown key; did you mean …?"""
    text = TWO_TIERS.replace("    max_concurrency: 2\n", "    max_concurency: 2\n")
    assert _problems(text) == [
        "policies/x.yaml:8: tiers[0].max_concurency: unknown key; did you mean max_concurrency?"
    ]


def test_unknown_key_without_close_match_lists_allowed_keys() -> None:
    """A key unlike any allowed one lists the keys that are allowed there."""
    problems = _problems(TWO_TIERS + "colour: blue\n")
    assert len(problems) == 1
    assert problems[0].startswith("policies/x.yaml:15: colour: unknown key; allowed: ")
    assert "tiers" in problems[0]
    assert "workloads" in problems[0]


def test_every_problem_is_reported_in_line_order() -> None:
    """Several mistakes come back together, sorted by line, with the value that was wrong."""
    text = TWO_TIERS.replace("kind: api", "kind: apii").replace("threshold: 0.7", "threshold: 7")
    assert _problems(text) == [
        "policies/x.yaml:10: tiers[0].threshold: Input should be less than or equal to 1 (got 7)",
        "policies/x.yaml:13: tiers[1].kind: Input should be 'self_hosted' or 'api' (got \"apii\")",
    ]


def test_price_typo_is_checked_against_the_price_style_meant() -> None:
    """A typo in GPU pricing is reported against GPU pricing, not against per-token pricing too."""
    text = TWO_TIERS.replace("tokens_per_second: 1000", "tokens_per_secnd: 1000")
    assert _problems(text) == [
        "policies/x.yaml:7: tiers[0].price.tokens_per_secnd: unknown key; "
        "did you mean tokens_per_second?",
        "policies/x.yaml:7: tiers[0].price.tokens_per_second: required key is missing",
    ]


def test_cross_field_problems_point_at_the_field() -> None:
    """Unknown overflow tier, rising thresholds and unknown probe tiers each name their line."""
    text = (
        TWO_TIERS.replace("overflow: big", "overflow: huge")
        + "    threshold: 0.9\n"
        + "probes:\n  - prompt: hi\n    expect: medium\n"
    )
    assert _problems(text) == [
        "policies/x.yaml:9: tiers[0].overflow: unknown tier 'huge'; allowed: small, big",
        "policies/x.yaml:15: tiers[1].threshold: 0.9 is above the previous tier's 0.7; "
        "tiers are listed cheapest first and thresholds must not increase",
        "policies/x.yaml:18: probes[0].expect: unknown tier 'medium'; allowed: small, big",
    ]


def test_self_hosted_tier_needs_endpoint() -> None:
    """A self-hosted tier without an endpoint is refused with what it needs."""
    text = TWO_TIERS.replace("    endpoint: http://127.0.0.1:8001/v1\n", "")
    assert _problems(text) == [
        "policies/x.yaml:3: tiers[0]: a self_hosted tier needs an endpoint "
        "(http://host:port/v1) or replicas (a list of them)"
    ]


def test_probe_needs_exactly_one_input() -> None:
    """A probe with neither prompt nor messages is refused."""
    problems = _problems(TWO_TIERS + "probes:\n  - expect: small\n")
    assert problems == ["policies/x.yaml:16: probes[0]: give exactly one of prompt or messages"]


def test_duplicate_keys_are_errors() -> None:
    """A key given twice in one mapping is an error, not a silent overwrite."""
    problems = _problems(TWO_TIERS.replace("name: team-a\n", "name: team-a\nname: team-b\n"))
    assert problems == ["policies/x.yaml:2: name: duplicate key"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "policies/x.yaml:1: a policy is a mapping of keys (name, tiers, …); got empty"),
        (
            "- a\n- b\n",
            "policies/x.yaml:1: a policy is a mapping of keys (name, tiers, …); got a list",
        ),
        ("name: x\ntiers: [\n", "policies/x.yaml:3: not valid YAML: expected the node content"),
    ],
)
def test_files_that_are_not_policies(text: str, expected: str) -> None:
    """Empty files, lists and broken YAML get a one-line error with the line."""
    assert _problems(text)[0].startswith(expected)


def test_load_policy_reports_the_real_path(write_policy: WritePolicy) -> None:
    """Errors from a file on disk name that file."""
    path = write_policy(TWO_TIERS.replace("kind: api", "kind: apii"), "team-a.yaml")
    with pytest.raises(PolicyError, match=rf"^{path}:13: tiers\[1\]\.kind: "):
        load_policy(path)


def test_missing_policy_file_says_what_exists(tmp_path: Path) -> None:
    """A policy that cannot be found lists the shipped ones."""
    with pytest.raises(Exception, match=r"policy 'nope' not found.*default"):
        load_policy("nope")


def test_fingerprint_ignores_formatting_but_not_content() -> None:
    """The policy version hash survives comments and reformatting, and changes with content."""
    base = parse_policy(TWO_TIERS)
    reformatted = parse_policy(
        "# a comment\n" + TWO_TIERS.replace("{gpu_usd_per_hour: 2.0", "{gpu_usd_per_hour: 2.00")
    )
    changed = parse_policy(TWO_TIERS.replace("threshold: 0.7", "threshold: 0.6"))
    assert base.fingerprint == reformatted.fingerprint
    assert base.fingerprint != changed.fingerprint


def test_committed_schema_is_current() -> None:
    """policies/policy.schema.json matches the models (regenerate: cascade policy schema --out)."""
    committed = json.loads((resource_dir("policies") / "policy.schema.json").read_text())
    assert committed == json.loads(json.dumps(policy_json_schema()))


def test_committed_reference_is_current() -> None:
    """policies/REFERENCE.md matches the models (regenerate: cascade policy reference --out)."""
    committed = (resource_dir("policies") / "REFERENCE.md").read_text(encoding="utf-8")
    assert committed == render_reference()


def test_schema_rejects_unknown_keys_for_editors() -> None:
    """The JSON Schema forbids unknown keys, so an editor flags typos as the loader does."""
    schema = policy_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Tier"]["additionalProperties"] is False


def test_a_self_hosted_tier_takes_an_endpoint_or_replicas_not_both() -> None:
    """replicas list the engines of one tier; giving both, or neither, is refused with the why."""
    both = TWO_TIERS.replace(
        "    endpoint: http://127.0.0.1:8001/v1\n",
        "    endpoint: http://127.0.0.1:8001/v1\n    replicas: [http://a:8000/v1]\n",
    )
    assert both != TWO_TIERS
    with pytest.raises(PolicyError, match="takes an endpoint or replicas, not both"):
        parse_policy(both)
    replicated = TWO_TIERS.replace(
        "    endpoint: http://127.0.0.1:8001/v1\n",
        "    replicas: [http://a:8000/v1, http://b:8000/v1]\n    engine: {metrics: vllm}\n",
    )
    tier = parse_policy(replicated).tier("small")
    assert tier.endpoints == ("http://a:8000/v1", "http://b:8000/v1")
    assert tier.routing == "prefix"
