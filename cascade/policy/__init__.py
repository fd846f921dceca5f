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
    "Workload",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
