"""Token logprobs of a simulated answer: a signal exactly as strong as real models give.

Source: in published uncertainty benchmarks of LLMs, mean token log-likelihood (the
length-normalised sequence likelihood baseline, e.g. in Kuhn et al. 2023, "Semantic
uncertainty") ranks right above wrong answers with an AUROC typically between 0.6 and 0.8 (the
range issue 11 states). The answers data (``../shared/data/answers/``) has no logprobs, so the
project measured nothing here: the simulator takes the middle of that range, :data:`AUROC` =
0.7, and nothing stronger.

How: the answer's mean token logprob is ``-exp(z)``, with ``z`` normal of spread
:data:`SPREAD` around ``log(0.3)`` for a right answer and shifted by
``SPREAD * sqrt(2) * Phi^-1(AUROC)`` for a wrong one -- so P(a right answer's mean is above a
wrong one's) is exactly ``AUROC``, and the two ranges overlap widely (right answers' middle 90%
-0.69 to -0.13, wrong ones' -0.99 to -0.19). The level (a median of -0.3) is a choice, not a
measurement; only the ranking carries information. Per token the values are exponential around
that mean, rescaled so that they average to it exactly. The default ``min_mean_logprob`` of
-1.5 catches about 1 wrong answer in 150 and 1 right one in 1,500.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist

__all__ = ["AUROC", "SPREAD", "token_logprobs"]

AUROC = 0.7
"""P(mean token logprob of a right answer > that of a wrong one): mid-range of the literature."""
SPREAD = 0.5
"""Standard deviation of log(-mean token logprob) across answers."""
_CENTER = math.log(0.3)
_SHIFT = SPREAD * math.sqrt(2.0) * NormalDist().inv_cdf(AUROC)
_FLOOR = -20.0


def token_logprobs(count: int, correct: bool, rng: random.Random) -> tuple[float, ...]:
    """``count`` token logprobs whose mean ranks right above wrong at :data:`AUROC`."""
    mean = math.exp(rng.gauss(_CENTER + (0.0 if correct else _SHIFT), SPREAD))
    raw = [rng.expovariate(1.0) for _ in range(count)]
    scale = mean / (sum(raw) / count) if count and sum(raw) > 0 else mean
    return tuple(round(max(-value * scale, _FLOOR), 4) for value in raw)
