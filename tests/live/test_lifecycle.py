"""Start-up rules and SIGTERM: streams finish or end with cancelled/shutdown, never cut."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer, tokens_text


def test_sigterm_finishes_short_streams_and_ends_long_ones_with_shutdown(
        fake: FakeProvider) -> None:
    server = GatewayServer(gateway_env(fake, GRACEFUL_TIMEOUT_S="6", SHUTDOWN_MARGIN_S="3"))
    with server:
        server.release_listener()
        short_tokens = [f"s{i} " for i in range(10)]
        short_model = fake.scenario(tokens=short_tokens, delay=0.1)
        long_model = fake.scenario(tokens=[f"l{i} " for i in range(1000)], delay=0.05)
        short = server.stream("POST", "/v1/streams", {"model": f"openai/{short_model}",
                                                       "prompt": "x"})
        long = server.stream("POST", "/v1/streams", {"model": f"anthropic/{long_model}",
                                                      "prompt": "x"})
        short.read_until(lambda e: e.event == "token")
        long.read_until(lambda e: e.event == "token")
        assert server.process is not None
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        events = short.read_all()
        assert events[-1].event == "done"
        assert tokens_text(events) == "".join(short_tokens)

        events = long.read_all()
        assert events[-1].event == "cancelled"
        assert events[-1].json() == {"reason": "shutdown"}
        ended_after = long.received[-1].at - signalled
        assert 2.5 < ended_after < 4.5  # graceful timeout 6 s less the 3 s margin
        call = fake.wait_closed(long_model)
        assert call.outcome == "peer_closed"

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, server.port), timeout=2).close()
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 6
        assert "Traceback" not in server.log()


def test_sigterm_with_no_streams_exits_at_once(fake: FakeProvider) -> None:
    with GatewayServer(gateway_env(fake)) as server:
        assert server.process is not None
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 3


def test_several_workers_without_redis_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
         "--bind", "127.0.0.1:0", "--workers", "3", "wsgi:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert result.returncode != 0
    assert "3 workers were asked for, but REDIS_URL is not set" in result.stderr
    assert "Run one worker (WORKERS=1) or set REDIS_URL" in result.stderr
