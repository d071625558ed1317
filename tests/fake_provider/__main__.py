"""Run the fake provider standalone: ``python -m tests.fake_provider --port 8089``.

Every model name gets the same behaviour (``--tokens`` lorem words, ``--delay``,
``--ttft``); no calls are recorded. The first line printed is the base URL
(OpenAI SDK: ``base_url=URL + "/v1"``; Anthropic SDK: ``base_url=URL``).
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from fake_wire import lorem_tokens
from tests.fake_provider.server import Behaviour, FakeProvider


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_provider",
        description="Fake OpenAI / Anthropic streaming provider.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    behaviour = Behaviour(tokens=lorem_tokens(args.tokens), delay=args.delay, ttft=args.ttft)
    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeProvider(args.host, args.port, default=behaviour, record=False) as provider:
        print(provider.url, flush=True)
        while not stopped.wait(0.5):  # a timeout, so that signals are handled at once
            pass


if __name__ == "__main__":
    main()
