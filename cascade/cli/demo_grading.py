"""The demo's user: grades each delivered answer with the simulator's ground truth.

The router never sees this: the demo client, like a user reading the answer, learns whether it
was right and marks wrong ones useless through ``POST /v1/feedback``. The answer is looked up
among what the simulated profiles write for the prompt as the tier received it (the demo's
policies keep volatile lines in the system role, so the user's message arrives as written).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascade.core.prompt import prepare_prompt
from cascade.simulator.answers import Ask
from cascade.simulator.grading import grade
from cascade.simulator.labels import LabelTable
from cascade.simulator.profiles import PROFILES


class Grader:
    """Says whether a delivered chat completion was right (None: cannot tell)."""

    def __init__(self, labels: LabelTable) -> None:
        self._labels = labels
        self._profiles = tuple(PROFILES.values())

    def grade(self, request: Mapping[str, Any], answer: Mapping[str, Any]) -> bool | None:
        """The simulator's verdict on ``answer``, the proxy's reply to ``request``."""
        choices = answer.get("choices") or [{}]
        text = str((choices[0].get("message") or {}).get("content") or "")
        prepared = prepare_prompt(request["messages"])
        user = [m for m in prepared.messages if m.get("role") == "user"][-1]
        form = request.get("response_format") or {}
        ask = Ask(
            prompt=str(user.get("content") or ""), json_mode=form.get("type") == "json_object"
        )
        return grade(ask, text, self._profiles, self._labels)
