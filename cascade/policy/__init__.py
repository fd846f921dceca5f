"""Routing policies: the YAML files platform teams edit, validated before anything runs."""

from cascade.policy.loading import load_policy, parse_policy, policy_json_schema
from cascade.policy.model import (
    Escalation,
    GpuPrice,
    Policy,
    Probe,
    PromptSettings,
    ScorerSettings,
    Tier,
    Timeouts,
    TokenPrice,
    VerifierSettings,
    Verify,
    Workload,
)

__all__ = [
    "Escalation",
    "GpuPrice",
    "Policy",
    "Probe",
    "PromptSettings",
    "ScorerSettings",
    "Tier",
    "Timeouts",
    "TokenPrice",
    "VerifierSettings",
    "Verify",
    "Workload",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
