"""The simulated tier: an OpenAI-compatible model server for demos, tests and benchmarks.

``cascade simulate-tier --profile 1.5b|7b|frontier --port P`` serves it. Modules, outside in:
``server`` (the Starlette app, :func:`~cascade.simulator.server.create_app`), ``wire`` and
``streaming`` (OpenAI's format), ``engine`` (the continuous-batching timing model), ``profiles``
(the three tiers' parameters), ``answers``/``structured`` (what the model says, ``n`` samples
of it), ``agreement`` (how often samples and cheap tiers agree, measured on real models),
``logprobs`` (token logprobs no more telling than real ones), ``labels`` and ``dataset`` (the
shipped labeled data that decides right from wrong), ``prefix`` (the prefix cache), ``metrics``
(vLLM-named Prometheus gauges). Nothing here is imported by ``cascade``.
"""
