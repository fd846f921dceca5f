"""The pure core of a request, before any model runs: ① prompt, ② score (through a scorer from
:mod:`cascade.model`), ③ decide — chained by :class:`~cascade.core.planner.Planner` — plus the
tokens, prices and capacity they read, and the policy probes that exercise them.

No I/O, no network; imports nothing above it (``run``, ``tiers``, ``ledger``, ``server``).
"""
