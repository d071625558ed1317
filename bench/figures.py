"""The scenarios behind each figure. Each is bounded in count and in time.

Every function takes a ``Bench`` (the fake provider, the settings) and a
``Session`` (one server under test, running) and returns plain JSON-able data.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import servers
from bench.client import (
    Conn,
    Parser,
    StreamResult,
    Target,
    connect,
    http_request,
    result,
    run_streams,
    tokens_of,
)
from bench.stats import peak_overlap, summary
from fake_wire import lorem_tokens

now = time.monotonic
MS = 1000.0


@dataclass
class Settings:
    """Counts and durations of every scenario (``full`` or ``smoke``)."""

    lone_n: int = 200
    lone_warmup: int = 20
    burst_n: int = 200
    burst_reps: int = 2
    burst_tokens: int = 50
    burst_delay: float = 0.02
    burst_deadline_s: float = 50
    step_ns: tuple[int, ...] = (250, 350, 500, 700, 1000, 1400, 2000, 2800, 4000)
    step_tokens: int = 100  # at 10 tokens/s: a 10 s stream
    step_ramp_s: float = 5.0  # streams open evenly over this; all are open after it
    step_slack_s: float = 6.0
    step_restart: bool = True  # a fresh server for every step
    gap_limit_s: float = 0.25
    ttft_limit_s: float = 1.0  # a stream that waits longer than this to start is not held
    mem_ns: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "gateway": (1000, 5000), "starlette": (1000, 5000), "flask-gthread": (200,),
        "flask-sync": (5,), "floor": (1000, 5000), "provider": (1000, 5000)})
    # The same, but the provider sends one token and then nothing: memory of held, idle
    # streams, whatever the server's CPU could keep up with.
    mem_silent_ns: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "gateway": (5000,), "starlette": (5000,), "floor": (5000,), "provider": (5000,)})
    mem_rate: float = 400.0  # streams opened per second
    mem_settle_s: float = 3.0
    mem_sample_gap_s: float = 0.3
    # 50 streams at 20 tokens/s: 1,000 tokens/s, below what any server saturates at, so
    # that no server merges tokens into fewer events because it fell behind.
    cpu_streams: int = 50
    cpu_streams_sync: int = 10
    cpu_tokens: tuple[int, int] = (100, 20)  # the workload, and the short one for the margin
    cpu_delay: float = 0.05
    cpu_pause_s: float = 0.3  # before and after each workload
    cancel_n: int = 30
    drop_n: int = 10
    drop_cap_s: float = 5.0
    # The floor watches no disconnects: like the Flask pattern, it would close nothing.
    drop_servers: tuple[str, ...] | None = ("gateway", "starlette", "flask-gthread",
                                            "flask-sync", "provider")
    resume_n: int = 20
    # 9: the gateway's coalescing (coalesce_ms) at realistic cadences, against none.
    coalesce_ms: float = 50.0
    coalesce_delays: tuple[float, ...] = (0.01, 0.02, 0.03)
    coalesce_streams: int = 50
    coalesce_tokens: int = 100
    restart_per_group: bool = True
    scenario_wait_s: float = 60.0  # before each scenario, wait this long at most for quiet
    total_wait_s: float = 300.0  # ... and this long in all


SMOKE = Settings(
    lone_n=8, lone_warmup=2, burst_n=20, burst_reps=1, burst_tokens=10, burst_deadline_s=10,
    step_ns=(20,), step_tokens=8, step_ramp_s=0.3, step_slack_s=6.0, step_restart=False,
    mem_ns={"gateway": (20,), "starlette": (20,), "flask-gthread": (20,), "flask-sync": (4,),
            "floor": (20,), "provider": (20,)},
    mem_silent_ns={"gateway": (20,)}, mem_rate=200.0, mem_settle_s=0.3, mem_sample_gap_s=0.05,
    cpu_streams=10, cpu_streams_sync=4,
    cpu_tokens=(20, 5), cpu_delay=0.005, cpu_pause_s=0.05, cancel_n=3, drop_n=2,
    drop_cap_s=2.0, drop_servers=("gateway", "provider"), resume_n=3, coalesce_streams=5,
    coalesce_tokens=10, coalesce_delays=(0.01,), restart_per_group=False,
    scenario_wait_s=0.0)


class Bench:
    """What every scenario shares: the fake provider and the settings."""

    def __init__(self, provider: servers.Provider, settings: Settings) -> None:
        self.provider = provider
        self.s = settings
        self.loadgen_cpu: dict[str, float] = {}  # scenario -> harness CPU seconds while loading

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        """The fake provider's control routes, without blocking the event loop."""
        host, port = self.provider.target.host, self.provider.target.port
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(http_request(method, host, port, path, body))
            raw = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        return json.loads(raw.split(b"\r\n\r\n", 1)[1])

    async def scenario(self, tokens: int, count: int = 1, record: bool = True,
                       **behaviour: Any) -> list[str]:
        reply = await self.control("POST", "/_scenario", {
            "tokens": tokens, "count": count, "record": record, **behaviour})
        return list(reply["models"])

    async def call(self, model: str) -> dict[str, Any] | None:
        calls = await self.control("GET", f"/_calls/{model}")
        return calls[0] if calls else None

    async def wait_closed(self, model: str, cap_s: float) -> dict[str, Any] | None:
        """The provider's record of ``model``'s call once it has an outcome (or at the cap)."""
        deadline = now() + cap_s
        while True:
            call = await self.call(model)
            if (call and call["outcome"]) or now() >= deadline:
                return call
            await asyncio.sleep(0.005)

    async def load(self, label: str, target: Target, requests: list[bytes], **kw: Any
                   ) -> tuple[list[Conn], float, float]:
        """``run_streams``, also returning the harness's CPU and the wall time it took."""
        cpu0, t0 = time.process_time(), now()
        conns = await run_streams(target, requests, **kw)
        cpu, wall = time.process_time() - cpu0, now() - t0
        self.loadgen_cpu[label] = self.loadgen_cpu.get(label, 0.0) + cpu
        return conns, cpu, wall


class Session:
    """One server under test, started for a group of scenarios (or the provider itself)."""

    def __init__(self, spec: servers.Spec, provider: servers.Provider) -> None:
        self.spec = spec
        self.provider = provider
        self.server: servers.Server | None = None
        if spec.name == "provider":
            self.target = provider.target
        else:
            self.server = servers.Server(spec, provider.url)
            try:
                self.server.wait_ready()
            except BaseException:
                self.server.stop(timeout=3)
                raise
            self.target = self.server.target

    def pids(self) -> list[int]:
        return self.server.pids() if self.server else [self.provider.pid]

    def cpu(self) -> float:
        return servers.cpu_seconds(self.pids())

    def rss(self) -> int:
        return servers.rss_kib(self.pids())

    def pss(self) -> int:
        return servers.pss_kib(self.pids())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=8 if self.spec.name == "gateway" else 3)

    def request(self, model: str, **kw: Any) -> bytes:
        return self.target.stream_request(model, **kw)


def expected_text(tokens: int) -> str:
    return "".join(lorem_tokens(tokens))


def results_of(session: Session, conns: list[Conn], tokens: int) -> list[StreamResult]:
    expected = expected_text(tokens)
    return [result(session.target, conn, expected) for conn in conns]


def errors_of(results: list[StreamResult]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "?")[:80]
            errors[key] = errors.get(key, 0) + 1
    return errors


async def warm_up(bench: Bench, session: Session) -> None:
    """A few streams, one at a time then together, so lazy set-up is not measured."""
    model = (await bench.scenario(5, record=False))[0]
    for _ in range(5):
        await bench.load("warm-up", session.target, [session.request(model)], deadline_s=10)
    await bench.load("warm-up", session.target, [session.request(model)] * 8, deadline_s=10)


# --------------------------------------------------------------------------- 1. lone stream


async def lone_ttft(bench: Bench, session: Session) -> dict[str, Any]:
    """Time to first token, one stream at a time (5 tokens, no provider delay)."""
    s = bench.s
    models = await bench.scenario(5, count=s.lone_n + s.lone_warmup)
    ttfts, before, after, res = [], [], [], []
    for i, model in enumerate(models):
        conns, _, _ = await bench.load("1", session.target, [session.request(model)],
                                       deadline_s=10)
        r = results_of(session, conns, 5)[0]
        if i < s.lone_warmup:
            continue
        res.append(r)
        if r.ttft is not None:
            ttfts.append(r.ttft)
            call = await bench.call(model)
            if call and call["first_token_at"] is not None:
                # Where the time goes: before the provider got the request, and after
                # it wrote the first token.
                before.append(call["opened_at"] - conns[0].t_start)
                after.append(conns[0].t_start + r.ttft - call["first_token_at"])
        await asyncio.sleep(0.002)
    return {"ttft_ms": summary(ttfts, MS), "to_provider_ms": summary(before, MS),
            "provider_to_client_ms": summary(after, MS), "ok": sum(r.ok for r in res),
            "n": len(res), "errors": errors_of(res)}


# --------------------------------------------------------------------------- 2. 200 at once


async def burst(bench: Bench, session: Session) -> dict[str, Any]:
    """``burst_n`` streams opened at once (50 tokens 20 ms apart), ``burst_reps`` times."""
    s = bench.s
    reps = 1 if session.spec.name == "flask-sync" else s.burst_reps
    ttfts: list[float] = []
    gaps: list[float] = []
    res: list[StreamResult] = []
    walls = []
    for _ in range(reps):
        model = (await bench.scenario(s.burst_tokens, delay=s.burst_delay, record=False))[0]
        conns, _, wall = await bench.load(
            "2", session.target, [session.request(model) for _ in range(s.burst_n)],
            deadline_s=s.burst_deadline_s)
        walls.append(wall)
        batch = results_of(session, conns, s.burst_tokens)
        res += batch
        ttfts += [r.ttft for r in batch if r.ttft is not None and r.ok]
        gaps += [g for r in batch if r.ok for g in r.gaps]
        await asyncio.sleep(0.5 if reps > 1 else 0)
    return {"ttft_ms": summary(ttfts, MS), "gap_ms": summary(gaps, MS),
            "ok": sum(r.ok for r in res), "n": len(res), "errors": errors_of(res),
            "wall_s": walls, "reps": reps}


# --------------------------------------------------------------------------- 3. step up


async def step(bench: Bench, session: Session, n: int) -> dict[str, Any]:
    """``n`` streams at 10 tokens/s, opened evenly over ``step_ramp_s``."""
    s = bench.s
    tokens = s.step_tokens
    model = (await bench.scenario(tokens, delay=0.1, record=False))[0]
    cpu0, fake0 = session.cpu(), bench.provider.cpu()
    conns, lg_cpu, wall = await bench.load(
        f"3:{n}", session.target, [session.request(model) for _ in range(n)],
        rate=n / s.step_ramp_s, deadline_s=s.step_ramp_s + tokens * 0.1 + s.step_slack_s)
    cpu, fake_cpu = session.cpu() - cpu0, bench.provider.cpu() - fake0
    res = results_of(session, conns, tokens)
    gaps = [g for r in res for g in r.gaps]
    ttfts = [r.ttft for r in res if r.ttft is not None]
    ok = sum(r.ok for r in res)
    gap = summary(gaps, MS)
    ttft = summary(ttfts, MS)
    holds = (ok == n and gap["p99"] is not None and gap["p99"] < s.gap_limit_s * MS
             and ttft["p99"] is not None and ttft["p99"] < s.ttft_limit_s * MS)
    return {"n": n, "ok": ok, "holds": holds, "gap_ms": gap, "ttft_ms": ttft,
            "errors": errors_of(res), "wall_s": wall, "server_cpu_s": cpu,
            "provider_cpu_s": fake_cpu, "loadgen_cpu_s": lg_cpu,
            "peak_open": peak_overlap([(c.t_start, c.t_end or c.t_start) for c in conns]),
            "tokens": sum(len(r.token_times) for r in res)}


# --------------------------------------------------------------------------- 4. memory


def _has_token(target: Target, conn: Conn) -> bool:
    parser = Parser()  # a fresh one: the stream goes on, nothing is cached
    for t, data in list(conn.chunks):
        parser.feed(t, data)
    try:
        return bool(tokens_of(target.kind, parser.events)[0])
    except ValueError:
        return False


async def memory(bench: Bench, session: Session, n: int, silent: bool = False
                 ) -> dict[str, Any]:
    """RSS with ``n`` streams held at 1 token/s (``silent``: one token, then nothing),
    minus the RSS before them."""
    s = bench.s
    ramp_s = n / s.mem_rate
    tokens = int(ramp_s + s.mem_settle_s + 60)
    behaviour: dict[str, Any] = {"delay": 1.0}
    if silent:
        behaviour.update(stall_after=1, stall_s=600)
    model = (await bench.scenario(tokens, record=False, **behaviour))[0]
    await asyncio.sleep(s.mem_settle_s)
    base_rss, base_pss = session.rss(), session.pss()
    sample: dict[str, Any] = {}

    async def hold(conns: list[Conn]) -> None:
        deadline = now() + ramp_s + 60
        waiting = set(range(n))
        while now() < deadline:  # until every stream has had its first token (or ended)
            await asyncio.sleep(0.05 if len(waiting) < 100 else 0.5)
            if now() < t0 + ramp_s:
                continue
            waiting = {i for i in waiting if not conns[i].closed.done()
                       and not (conns[i].chunks and _has_token(session.target, conns[i]))}
            if not waiting:
                break
        sample["first_token_waiting"] = len(waiting)
        await asyncio.sleep(s.mem_settle_s)
        rss, pss = [], []
        for _ in range(3):
            rss.append(session.rss())
            pss.append(session.pss())
            await asyncio.sleep(s.mem_sample_gap_s)
        t = now()
        sample["rss"] = sorted(rss)[1]
        sample["pss"] = sorted(pss)[1]
        if silent:  # alive: open, and had its token
            sample["alive"] = sum(1 for c in conns if not c.closed.done()
                                  and _has_token(session.target, c))
        else:  # alive: open, and data came in the last 2.5 s (tokens come every second)
            sample["alive"] = sum(1 for c in conns if not c.closed.done() and c.chunks
                                  and t - c.chunks[-1][0] < 2.5)
        sample["errors"] = sum(1 for c in conns if c.error)

    t0 = now()
    _, _, wall = await bench.load("4", session.target,
                                  [session.request(model) for _ in range(n)],
                                  rate=s.mem_rate, deadline_s=ramp_s + 70, hold=hold)
    alive = sample.get("alive", 0)
    rss, pss = sample.get("rss", 0), sample.get("pss", 0)
    return {"n": n, "alive": alive, "errors": sample.get("errors"),
            "no_token_after_60_s": sample.get("first_token_waiting"), "base_rss_kib": base_rss,
            "rss_kib": rss,
            "base_pss_kib": base_pss, "pss_kib": pss,
            "rss_per_stream_kib": (rss - base_rss) / n if rss else None,
            "pss_per_stream_kib": (pss - base_pss) / n if pss else None,
            "total_rss_per_stream_kib": rss / n if rss else None, "wall_s": wall}


# --------------------------------------------------------------------------- 5. CPU


async def cpu(bench: Bench, session: Session) -> dict[str, Any]:
    """Server CPU (utime + stime, whole process tree) over a fixed workload, per token."""
    s = bench.s
    sync = session.spec.name == "flask-sync"
    streams = s.cpu_streams_sync if sync else s.cpu_streams
    concurrency = 5 if sync else None
    runs = []
    for tokens in s.cpu_tokens:
        model = (await bench.scenario(tokens, delay=s.cpu_delay, record=False))[0]
        await asyncio.sleep(s.cpu_pause_s)
        cpu0, fake0 = session.cpu(), bench.provider.cpu()
        conns, lg_cpu, wall = await bench.load(
            "5", session.target, [session.request(model) for _ in range(streams)],
            concurrency=concurrency, deadline_s=60)
        await asyncio.sleep(s.cpu_pause_s)  # let the last stream's end be accounted
        used, fake = session.cpu() - cpu0, bench.provider.cpu() - fake0
        res = results_of(session, conns, tokens)
        relayed = tokens * sum(r.ok for r in res)
        events = sum(len(r.token_times) for r in res if r.ok)
        runs.append({"tokens_per_stream": tokens, "streams": streams, "ok": sum(r.ok for r in res),
                     "tokens": relayed, "token_events": events, "cpu_s": used, "provider_cpu_s": fake,
                     "loadgen_cpu_s": lg_cpu, "wall_s": wall, "errors": errors_of(res)})
    long, short = runs
    per_token = long["cpu_s"] / long["tokens"] if long["tokens"] else None
    margin = None
    if long["tokens"] > short["tokens"] and long["ok"] == short["ok"] == streams:
        margin = (long["cpu_s"] - short["cpu_s"]) / (long["tokens"] - short["tokens"])
    return {"runs": runs, "concurrency": concurrency or streams,
            "cpu_s_per_1000_tokens": per_token * 1000 if per_token is not None else None,
            "marginal_us_per_token": margin * 1e6 if margin is not None else None,
            "us_per_token": per_token * 1e6 if per_token is not None else None,
            "provider_us_per_token": (long["provider_cpu_s"] / long["tokens"] * 1e6
                                      if long["tokens"] else None),
            "loadgen_us_per_token": (long["loadgen_cpu_s"] / long["tokens"] * 1e6
                                     if long["tokens"] else None)}


# --------------------------------------------------------------------------- 9. coalescing


async def coalesce(bench: Bench, session: Session) -> dict[str, Any]:
    """The gateway's ``coalesce_ms`` against none, on the same workload at each cadence:
    token events per second and per stream, and server CPU per token."""
    s = bench.s
    runs = []
    for delay in s.coalesce_delays:
        for window in (0.0, s.coalesce_ms):
            tokens = s.coalesce_tokens
            model = (await bench.scenario(tokens, delay=delay, record=False))[0]
            await asyncio.sleep(s.cpu_pause_s)
            cpu0 = session.cpu()
            request = session.target.stream_request(model, extra={"coalesce_ms": window})
            conns, _, wall = await bench.load("9", session.target,
                                              [request] * s.coalesce_streams, deadline_s=60)
            await asyncio.sleep(s.cpu_pause_s)  # let the last stream's end be accounted
            used = session.cpu() - cpu0
            res = results_of(session, conns, tokens)
            ok = [r for r in res if r.ok]
            events = sum(len(r.token_times) for r in ok)
            relayed = tokens * len(ok)
            runs.append({"delay_ms": delay * MS, "coalesce_ms": window,
                         "streams": s.coalesce_streams, "ok": len(ok), "tokens": relayed,
                         "token_events": events, "wall_s": wall,
                         "events_per_s": events / wall if wall else None,
                         "events_per_stream": events / len(ok) if ok else None,
                         "cpu_s": used,
                         "us_per_token": used / relayed * 1e6 if relayed else None,
                         "errors": errors_of(res)})
    return {"runs": runs}


# --------------------------------------------------------------------------- helpers: live


async def open_live(bench: Bench, target: Target, request: bytes, *, tokens: int = 1,
                    timeout: float = 15) -> Conn:
    """Open a stream and return once ``tokens`` token events have arrived."""
    got = asyncio.get_running_loop().create_future()
    kind = target.kind

    def on_event(conn: Conn) -> None:
        if got.done() or conn.parser is None:
            return
        count = 0
        for _, name, data, _ in conn.parser.events:
            if kind == "gateway":
                count += name == "token"
            elif data != "[DONE]" and '"content"' in data and '"content":""' not in data:
                count += 1
        if count >= tokens:
            got.set_result(None)

    conn = Conn(request, live=True, on_event=on_event)
    await connect(target, conn)
    closed = conn.closed
    done, _ = await asyncio.wait([got, closed], timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    if got not in done:
        conn.abort("no token in time")
        raise TimeoutError(f"{target.name}: no {tokens} tokens within {timeout} s "
                           f"({conn.error})")
    return conn


async def _close_times(bench: Bench, session: Session, n: int, batch: int, cap_s: float,
                       trigger: Callable[[Conn, str], Any], silent: bool,
                       gateway_grace: float = 0) -> dict[str, Any]:
    """Open streams, ``trigger`` each after its first token, time until the provider closed."""
    behaviour: dict[str, Any] = {"delay": 0.01}
    if silent:  # one token, then nothing until well after the cap
        behaviour.update(stall_after=1, stall_s=cap_s + 2)
    models = await bench.scenario(2000, count=n, **behaviour)
    times: list[float] = []
    outcomes: dict[str, int] = {}
    after_tokens: list[int] = []
    conns: list[Conn] = []
    for first in range(0, n, batch):
        group = models[first:first + batch]
        ids = [secrets.token_urlsafe(18) for _ in group]
        opened = await asyncio.gather(*[
            open_live(bench, session.target,
                      session.request(m, grace=gateway_grace, stream_id=i))
            for m, i in zip(group, ids, strict=True)], return_exceptions=True)
        fired: list[tuple[str, float, int]] = []
        for model, stream_id, conn in zip(group, ids, opened, strict=True):
            if isinstance(conn, BaseException):
                outcomes[f"failed to open: {conn}"[:80]] = outcomes.get(
                    f"failed to open: {conn}"[:80], 0) + 1
                continue
            conns.append(conn)
            await asyncio.sleep(0.02)
            call = await bench.call(model)
            sent_before = call["tokens_sent"] if call else 0
            t = await trigger(conn, stream_id)
            fired.append((model, t, sent_before))
        for model, t, sent_before in fired:
            call = await bench.wait_closed(model, max(0.0, t + cap_s - now()))
            if call and call["outcome"] and call["closed_at"] is not None \
                    and call["closed_at"] - t <= cap_s:
                times.append(call["closed_at"] - t)
                key = call["outcome"]
            else:
                key = f"still open at the {cap_s:g} s cap"
            outcomes[key] = outcomes.get(key, 0) + 1
            if call:
                after_tokens.append(call["tokens_sent"] - sent_before)
    for conn in conns:
        conn.abort("done")
    return {"ms": summary(times, MS), "closed": len(times), "n": n, "cap_s": cap_s,
            "outcomes": outcomes,
            "tokens_sent_after": summary([float(x) for x in after_tokens])}


# --------------------------------------------------------------------------- 6. DELETE


async def cancel(bench: Bench, session: Session) -> dict[str, Any]:
    """DELETE /v1/streams/<id> -> the provider's connection closed (gateway only)."""
    s = bench.s
    target = session.target

    async def delete(conn: Conn, stream_id: str) -> float:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        request = http_request("DELETE", target.host, target.port, f"/v1/streams/{stream_id}")
        t = now()
        writer.write(request)
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return t

    out = {}
    for silent in (False, True):
        out["silent" if silent else "streaming"] = await _close_times(
            bench, session, s.cancel_n, 1, s.drop_cap_s, delete, silent)
    return out


# --------------------------------------------------------------------------- 7. client drop


async def drop(bench: Bench, session: Session) -> dict[str, Any]:
    """The client closes its connection -> the provider's connection closed (all servers)."""
    s = bench.s
    batch = 4 if session.spec.name == "flask-sync" else s.drop_n

    async def close(conn: Conn, stream_id: str) -> float:
        conn.drop()
        assert conn.dropped_at is not None
        return conn.dropped_at

    out = {}
    for silent in (False, True):
        out["silent" if silent else "streaming"] = await _close_times(
            bench, session, s.drop_n, batch, s.drop_cap_s, close, silent)
    return out


# --------------------------------------------------------------------------- 8. resume


async def resume(bench: Bench, session: Session) -> dict[str, Any]:
    """Reconnect with Last-Event-ID -> the first replayed event (gateway only)."""
    s = bench.s
    target = session.target
    out: dict[str, Any] = {}
    for running in (True, False):
        times: list[float] = []
        failures = 0
        tokens = 500 if running else 20
        # 10 ms apart: one event per token (deltas that arrive together may share one).
        model = (await bench.scenario(tokens, delay=0.01 if running else 0.002,
                                      record=False))[0]
        for _ in range(s.resume_n):
            stream_id = secrets.token_urlsafe(18)
            request = target.stream_request(model, grace=2, stream_id=stream_id)
            if running:
                first = await open_live(bench, target, request, tokens=10)
                first.drop()
            else:  # read it to its end (deltas that come together may share an event)
                first = await connect(target, Conn(request))
                await asyncio.wait_for(first.closed, 10)
            got = asyncio.get_running_loop().create_future()

            def on_event(conn: Conn, got: asyncio.Future[None] = got) -> None:
                if not got.done():
                    got.set_result(None)

            # Events 0..N are kept; ask for everything after event 5.
            again = Conn(http_request("GET", target.host, target.port,
                                      f"/v1/streams/{stream_id}/events",
                                      headers={"Last-Event-ID": "5"}),
                         live=True, on_event=on_event)
            await connect(target, again)
            try:
                await asyncio.wait_for(got, 5)
                assert again.parser is not None
                at, _, _, event_id = again.parser.events[0]
                if event_id == "6":
                    times.append(at - again.t_start)
                else:
                    failures += 1
            except TimeoutError:
                failures += 1
            again.abort("done")
            await asyncio.sleep(0.01)
        out["running" if running else "ended"] = {"ms": summary(times, MS),
                                                  "failures": failures}
    return out

