"""④ call: one call to one tier in the OpenAI wire format, complete or streamed.

:mod:`~cascade.tiers.base` holds what every tier client shares (the answer, its usage, the
:class:`~cascade.tiers.base.TierClient` protocol, how a failed answer becomes a TierError);
:mod:`~cascade.tiers.self_hosted` speaks to OpenAI-compatible servers, reading streams as
server-sent events (:mod:`~cascade.tiers.sse`), over the keep-alive pool in
:mod:`~cascade.tiers.pool` (its connections in :mod:`~cascade.tiers.connection`, streamed answers
in :mod:`~cascade.tiers.stream`, messages in :mod:`~cascade.tiers.http1`, HTTP proxies in
:mod:`~cascade.tiers.proxies`); :mod:`~cascade.tiers.api` reaches frontier APIs through litellm.
"""
