"""The simulated tier: an OpenAI- and Anthropic-compatible model server for demos, tests and
benchmarks.

``cascade simulate-tier --profile 1.5b|7b|frontier --port P`` serves it: OpenAI's Chat Completions
API (``/v1/chat/completions``) and Anthropic's Messages API (``/v1/messages``, with Anthropic's
marker-based prompt caching; point an ``anthropic/...`` tier's endpoint at the server's root,
``http://host:P``). Modules, outside in: ``server`` (the Starlette app,
:func:`~cascade.simulator.server.create_app`), ``wire`` and ``streaming`` (OpenAI's format),
``anthropic_wire`` and ``anthropic_stream`` (Anthropic's), ``engine`` (the continuous-batching
timing model and the simulated clock), ``profiles`` (the three tiers' parameters),
``answers``/``structured`` (what the model says, ``n`` samples of it), ``agreement`` (how often
samples and cheap tiers agree, measured on real models), ``logprobs`` (token logprobs no more
telling than real ones), ``labels`` and ``dataset`` (the shipped labeled data that decides right
from wrong), ``prefix`` (vLLM's automatic prefix cache, for Chat Completions), ``marker_cache``
(Anthropic's prompt caching: only marked prefixes, with ttls, for Messages), ``metrics``
(vLLM-named Prometheus gauges and the cache's token counters). Nothing here is imported by
``cascade``.
"""
