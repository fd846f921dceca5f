"""The support-desk workload the caching benchmarks share: topics, question templates and a
stable system prompt of a chosen length."""

from __future__ import annotations

from cascade.core.tokens import estimate_tokens

TOPICS = ("orders", "refunds", "shipping", "warranty", "subscriptions", "invoices", "returns")
QUESTIONS = (
    "Where is order {n}?",
    "How do I return item {n} if it arrived broken?",
    "Can I change the delivery address of order {n}?",
    "Why was I charged twice for invoice {n}?",
    "Does the warranty cover model {n} after two years?",
    "How do I pause subscription {n} for a month?",
    "What does express shipping to postcode {n} cost?",
)
"""Templates: ``.format(n=...)`` makes each question new."""


def handbook(tokens: int = 3000) -> str:
    """A stable system prompt of about ``tokens`` estimated tokens."""
    rules: list[str] = []
    n = 0
    while estimate_tokens("\n".join(rules)) < tokens:
        topic = TOPICS[n % len(TOPICS)]
        rules.append(
            f"Rule {n + 1} ({topic}): answer questions about ACME's {topic} accurately and "
            f"concisely, cite section {n // 7 + 1}.{n % 7 + 1} of the handbook, never invent a "
            "price, a date or a policy, and hand the case to a human when the customer asks."
        )
        n += 1
    return "You are ACME's support assistant.\n" + "\n".join(rules)
