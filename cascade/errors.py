"""The exceptions cascade raises.

Every error the library raises on purpose derives from :class:`CascadeError`, so a caller can
catch one type. Each message says what went wrong, where, and what is allowed::

    CascadeError
     ├── PolicyError            a policy is invalid (file, line, key, what is allowed)
     ├── ResourceNotFoundError  a shipped model, policy or migration cannot be found
     ├── MissingExtraError      an optional dependency is not installed (names the extra)
     ├── ScorerError            the confidence model cannot be loaded or run
     │    ├── ModelIntegrityError   the model file does not match its manifest's sha256
     │    └── RuntimeMissingError   onnxruntime is not installed
     ├── RoutingError           a request cannot be routed (empty messages, unknown workload, …)
     │    └── InvalidRequestError   a field of the request has the wrong type or range
     ├── TierError              a call to a tier failed (saturated, 429, 5xx, timeout, refused, …)
     ├── LedgerError            the ledger cannot store or read a row (bad record, URL, spool)
     ├── BudgetExceededError    a key's budget cannot cover a request's worst-case cost
     ├── BudgetUnavailableError a key's budget cannot be read now (its database is out of reach)
     ├── LabeledDataError       a labeled-traffic file is unreadable or has an invalid row
     ├── TrainingError          a router model cannot be trained or exported as asked
     └── PlanError              cascade plan cannot price fleets as asked (no traffic, no price)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


class CascadeError(Exception):
    """Root of every error cascade raises on purpose."""


class ResourceNotFoundError(CascadeError):
    """A shipped resource (model, policy, migration) is missing."""


class MissingExtraError(CascadeError):
    """A command or tier needs an optional dependency that is not installed."""


EXTRAS = {
    "litellm": ("api", "API tiers"),
    "mcp": ("api", "API tiers with tools"),
    "sklearn": ("train", "training and evaluating models"),
    "skl2onnx": ("train", "exporting trained models"),
    "onnx": ("train", "exporting trained models"),
    "matplotlib": ("train", "charts (report --html, eval --plot, plan --plot)"),
    "onnxruntime": ("cpu", "scoring (on a CUDA machine, the gpu extra instead)"),
}
"""Optional top-level modules -> (the pip extra that installs them, what needs them)."""


def missing_extra(module: str | None) -> MissingExtraError | None:
    """The error to raise for a missing optional module, naming the extra; None if ``module``
    is not one of cascade's optional dependencies."""
    top = (module or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra, purpose = EXTRAS[top]
    return MissingExtraError(
        f"the {top!r} package is not installed; cascade needs it for {purpose}: "
        f"pip install 'cascade-router[{extra}]'"
    )


class ScorerError(CascadeError):
    """The confidence model cannot be loaded or run."""


class ModelIntegrityError(ScorerError):
    """The model file's sha256 differs from the one its manifest records."""


class RuntimeMissingError(ScorerError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


class RoutingError(CascadeError):
    """A request cannot be routed as given."""


class InvalidRequestError(RoutingError):
    """A field of a chat request has the wrong type or range; ``param`` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class LedgerError(CascadeError):
    """The ledger cannot do what was asked (bad record, bad URL, unreadable spool, …)."""


class BudgetExceededError(CascadeError):
    """A key's budget cannot cover a request's worst-case cost (the proxy's 429
    ``insufficient_quota``)."""

    def __init__(self, key_id: str, need_usd: Decimal, left_usd: Decimal, hint: str = "") -> None:
        self.key_id, self.need_usd, self.left_usd = key_id, need_usd, left_usd
        super().__init__(
            f"the budget of key {key_id} cannot cover this request: it may cost up to "
            f"${need_usd:.6f} (every attempt it may make, at the dearest tier it may reach) and "
            f"${max(left_usd, Decimal(0)):.6f} of the budget is left for this period{hint}"
        )


class BudgetUnavailableError(CascadeError):
    """A key's budget is in a database this worker cannot reach now."""


class LabeledDataError(CascadeError):
    """A labeled-traffic file is missing, unreadable or has an invalid row (file:line, field)."""


class PlanError(CascadeError):
    """``cascade plan`` cannot price fleets as asked: no traffic in the window, or a tier the
    traffic needs has no price in the policy."""


class TrainingError(CascadeError):
    """The model cannot be trained or exported as asked."""


class TierError(CascadeError):
    """A call to a tier failed; ``kind`` says how, and whether another tier may be tried.

    Kinds that spill to the overflow tier: ``saturated``, ``rate_limited`` (429), ``unavailable``
    (503), ``server_error`` (other 5xx), ``timeout``, ``connection`` (refused or reset) and
    ``bad_response`` (not an OpenAI answer). ``client_error`` (other 4xx) is the request's own
    fault: it goes back to the client unchanged, since another tier would refuse it too.
    """

    SPILLABLE = frozenset(
        {
            "saturated",
            "rate_limited",
            "unavailable",
            "server_error",
            "timeout",
            "connection",
            "bad_response",
        }
    )

    def __init__(
        self,
        tier: str,
        kind: str,
        message: str,
        status: int | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        self.tier = tier
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        """How long the tier asked not to be called again (its ``Retry-After``), if it said."""
        super().__init__(f"tier {tier!r}: {kind}: {message}")

    @property
    def spillable(self) -> bool:
        """Whether the same request may go to another tier."""
        return self.kind in self.SPILLABLE


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy: where it is and what is allowed."""

    source: str
    line: int | None
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return (
            f"{where}: {self.location}: {self.message}"
            if self.location
            else f"{where}: {self.message}"
        )


class PolicyError(CascadeError):
    """A policy failed validation; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
