"""④ call: one call to one tier in the OpenAI wire format, complete or streamed.

:mod:`~cascade.tiers.base` holds what every tier client shares (the answer, its usage, the
:class:`~cascade.tiers.base.TierClient` protocol); :mod:`~cascade.tiers.self_hosted` speaks to
OpenAI-compatible servers over the keep-alive pool in :mod:`~cascade.tiers.pool`;
:mod:`~cascade.tiers.api` reaches frontier APIs through litellm.
"""
