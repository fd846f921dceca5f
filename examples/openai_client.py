"""An unchanged OpenAI SDK app, pointed at the cascade proxy.

Start the proxy (and tiers it can reach), then run this:

    .venv/bin/cascade serve --policy policies/default.yaml --port 8080
    .venv/bin/python examples/openai_client.py --base-url http://127.0.0.1:8080/v1

The only change from calling OpenAI directly is the base URL and the model name ``cascade``.
The response headers say which tier answered, what it cost and every attempt it took.
"""

from __future__ import annotations

import argparse

import openai


def main() -> None:
    """Send one plain and one streamed request; print the answer and the routing headers."""
    parser = argparse.ArgumentParser(description="Call the cascade proxy with the OpenAI SDK.")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="not-needed-for-a-local-proxy")

    raw = client.chat.completions.with_raw_response.create(
        model="cascade",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    answer = raw.parse()
    print(answer.choices[0].message.content)
    for header in ("tier", "model", "confidence", "cost-usd", "attempts", "request-id"):
        print(f"  x-cascade-{header}: {raw.headers.get(f'x-cascade-{header}')}")

    stream = client.chat.completions.create(
        model="cascade",
        messages=[{"role": "user", "content": "Name three prime numbers."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:
            print(f"\n  usage: {chunk.usage.prompt_tokens} in, {chunk.usage.completion_tokens} out")


if __name__ == "__main__":
    main()
