"""Benchmark the gateway against the alternatives: ``make bench`` / ``python -m bench.run``.

One run starts the fake provider (``bench/provider.py``), then, one at a time,
each server under test against it, drives it with the load generator
(``bench/client.py``, asyncio + raw sockets, uvloop when installed, in this
process), and writes ``results.md``, ``results.json`` and PNG plots to
``bench/results/`` (or ``--out``). Git keeps ``results.md`` and the plots;
``results.json`` (every number, what ``--report-only`` re-renders from) stays on
the machine that ran it (.gitignore). ``--smoke`` runs tiny counts on the
gateway, the lower bound and one or two alternatives in well under 30 s.

Every process started here is stopped by its pid, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import resource
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import figures, machine, report, servers
from bench.client import loop_name, run_loop
from bench.figures import Bench, Session, Settings

RESULTS = Path(__file__).resolve().parent / "results"
FULL_SERVERS = ("gateway", "starlette", "flask-gthread", "flask-sync", "floor", "provider")
SMOKE_SERVERS = ("gateway", "flask-gthread", "starlette", "floor", "provider")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def available(spec: servers.Spec) -> str | None:
    """Why this server cannot run here (a dependency missing), or None."""
    for module in filter(None, [spec.module, "uvicorn" if spec.name == "starlette" else ""]):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: blocked in sys.modules
            found = False
        if not found:
            return f"skipped: {module} is not installed (pip install -r requirements-bench.txt)"
    return None


class Runner:
    def __init__(self, settings: Settings, names: list[str], only: set[str], smoke: bool
                 ) -> None:
        self.s = settings
        self.names = names
        self.only = only
        self.smoke = smoke
        self.results: dict[str, Any] = {"figures": {}, "errors": [], "load": {}, "skipped": {}}
        self.provider: servers.Provider | None = None
        self.bench: Bench | None = None
        self.waited_s = 0.0

    def fig(self, key: str) -> dict[str, Any]:
        figures_: dict[str, Any] = self.results["figures"]
        return figures_.setdefault(key, {})

    def wanted(self, key: str) -> bool:
        return not self.only or key in self.only

    async def session(self, name: str) -> Session:
        assert self.provider is not None and self.bench is not None
        session = Session(servers.SPECS[name], self.provider)
        await figures.warm_up(self.bench, session)
        return session

    async def settle(self) -> float:
        """Before a scenario: wait while other processes load the machine (0.1 core or
        more over a second), up to ``scenario_wait_s``, and ``total_wait_s`` in all."""
        waited = 0.0
        while self.waited_s < self.s.total_wait_s and waited < self.s.scenario_wait_s:
            meter = machine.Meter().start()
            await asyncio.sleep(1.0)
            if meter.stop()["other_cores"] < 0.1:
                break
            waited += 1.0
            self.waited_s += 1.0
        if waited:
            log(f"waited {waited:.0f} s for other processes to calm down")
        return waited

    async def measure(self, key: str, name: str, what: Callable[[], Awaitable[Any]],
                      slot: str | None = None) -> None:
        """Run one scenario, keep its result (or its failure) and the machine's load."""
        waited = await self.settle() if self.s.scenario_wait_s else 0.0
        meter = machine.Meter().start()
        started = time.monotonic()
        try:
            value = await what()
        except Exception as exc:
            value = {"failed": f"{type(exc).__name__}: {exc}"}
            self.results["errors"].append(f"figure {key}, {name}: {type(exc).__name__}: {exc}")
            log(f"figure {key} on {name} failed:\n{traceback.format_exc()}")
        load = meter.stop()
        if slot is None:
            self.fig(key)[name] = value
        else:
            self.fig(key).setdefault(name, {})[slot] = value
        loads = self.results["load"].setdefault(key, [])
        loads.append({"server": name, **({"slot": slot} if slot else {}),
                      **{k: round(v, 3) for k, v in load.items()}, "waited_s": waited})
        log(f"figure {key} on {name}{' ' + slot if slot else ''}: "
            f"{time.monotonic() - started:.1f} s, other processes used "
            f"{load['other_cores']:.2f} cores")

    async def group_a(self, name: str, session: Session | None = None) -> None:
        """1, 2, 5, (6, 8, 9), 7 on one server process."""
        if not any(self.wanted(k) for k in "1256789"):
            return
        own = session is None
        session = session or await self.session(name)
        assert self.bench is not None
        bench = self.bench
        try:
            if self.wanted("1"):
                await self.measure("1", name, lambda: figures.lone_ttft(bench, session))
            if self.wanted("2"):
                await self.measure("2", name, lambda: figures.burst(bench, session))
            if self.wanted("5"):
                await self.measure("5", name, lambda: figures.cpu(bench, session))
            if name == "gateway" and self.wanted("6"):
                await self.measure("6", name, lambda: figures.cancel(bench, session))
            if name == "gateway" and self.wanted("8"):
                await self.measure("8", name, lambda: figures.resume(bench, session))
            if name == "gateway" and self.wanted("9"):
                await self.measure("9", name, lambda: figures.coalesce(bench, session))
            drops = self.s.drop_servers
            if self.wanted("7") and (drops is None or name in drops):
                # Last: the naive servers may keep orphaned streams going.
                await self.measure("7", name, lambda: figures.drop(bench, session))
        finally:
            if own:
                session.stop()

    async def group_b(self, name: str, session: Session | None = None,
                      limit: int | None = None) -> None:
        """3: step up until it breaks."""
        if not self.wanted("3"):
            return
        assert self.bench is not None
        bench = self.bench
        for n in self.s.step_ns:
            if limit is not None and n > limit:
                break
            current = session or await self.session(name)
            try:
                await self.measure("3", name, lambda c=current, n=n: figures.step(bench, c, n),
                                   slot=str(n))
            finally:
                if session is None:
                    current.stop()
            step = self.fig("3")[name][str(n)]
            if not step.get("holds"):
                break
            if session is None:
                await asyncio.sleep(1)

    async def group_c(self, name: str, session: Session | None = None) -> None:
        """4: memory per held stream."""
        if not self.wanted("4"):
            return
        assert self.bench is not None
        bench = self.bench
        runs = [(n, False) for n in self.s.mem_ns.get(name, ())]
        runs += [(n, True) for n in self.s.mem_silent_ns.get(name, ())]
        for n, silent in runs:
            current = session or await self.session(name)
            try:
                await self.measure(
                    "4", name, lambda c=current, n=n, q=silent: figures.memory(bench, c, n, q),
                    slot=f"{n} silent" if silent else str(n))
            finally:
                if session is None:
                    current.stop()

    async def run(self) -> None:
        self.provider = servers.Provider()
        self.bench = Bench(self.provider, self.s)
        self.results["clock_check"] = await self.clock_check()
        names = []
        for name in self.names:
            why = available(servers.SPECS[name])
            if why:
                self.results["skipped"][name] = why
                log(f"{name}: {why}")
            else:
                names.append(name)
        self.results["servers"] = names
        if not self.s.restart_per_group:  # smoke: one process per server for everything
            for name in names:
                session = await self.session(name)
                try:
                    await self.group_a(name, session)
                    await self.group_b(name, session)
                    await self.group_c(name, session)
                finally:
                    session.stop()
            return
        for name in names:
            await self.group_a(name)
        for name in names:
            limit = None
            if name == "provider":  # the lower bound: one step past the best server
                held = [int(n) for other, steps in self.fig("3").items()
                        for n, step in steps.items() if other != "provider"
                        and step.get("holds")]
                higher = [n for n in self.s.step_ns if n > max(held, default=0)]
                limit = higher[0] if higher else None
            await self.group_b(name, limit=limit)
        for name in names:
            await self.group_c(name)

    async def clock_check(self) -> dict[str, Any]:
        """CLOCK_MONOTONIC is system-wide: the provider's reading lies between two of ours."""
        assert self.bench is not None
        worst = 0.0
        ok = True
        for _ in range(20):
            before = time.monotonic()
            theirs = (await self.bench.control("GET", "/_clock"))["monotonic"]
            after = time.monotonic()
            ok = ok and before <= theirs <= after
            worst = max(worst, after - before)
        return {"ok": ok, "samples": 20, "widest_window_ms": worst * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, < 30 s")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--servers", help=f"comma-separated, of {','.join(FULL_SERVERS)}")
    parser.add_argument("--figures", help="comma-separated figure numbers (default: all)")
    parser.add_argument("--wait-quiet", type=float, default=None,
                        help="seconds to wait at most for a quiet machine (default 600; smoke 0)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: write results.md and the plots again from "
                             "the results.json in --out")
    args = parser.parse_args(argv)
    if args.report_only:
        raw = args.out / "results.json"
        if not raw.exists():
            parser.error(f"no {raw}: --report-only re-renders a run made on this machine "
                         "(results.json is not committed)")
        results = json.loads(raw.read_text())
        plots = [] if args.no_plots else report.plots(results, args.out)
        (args.out / "results.md").write_text(report.markdown(results, plots))
        log(f"written: {args.out / 'results.md'}")
        return 0

    settings = figures.SMOKE if args.smoke else Settings()
    names = (args.servers.split(",") if args.servers
             else list(SMOKE_SERVERS if args.smoke else FULL_SERVERS))
    for name in names:
        if name not in servers.SPECS:
            parser.error(f"unknown server {name!r}")
    only = set(args.figures.split(",")) if args.figures else set()
    # The load generator holds thousands of sockets; the servers inherit the limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    runner = Runner(settings, names, only, args.smoke)
    results = runner.results
    results["mode"] = "smoke" if args.smoke else "full"
    results["settings"] = {k: v for k, v in vars(settings).items()}
    results["specs"] = {name: {"label": s.label, "config": s.config}
                        for name, s in servers.SPECS.items()}
    wait = args.wait_quiet if args.wait_quiet is not None else (0 if args.smoke else 600)
    if wait > 0:
        log(f"checking that the machine is quiet (waiting {wait:.0f} s at most)")
        results["quiet"] = machine.wait_quiet(wait, log=log)
    results["machine"] = machine.describe()
    results["machine"]["others_before"] = machine.busiest_others()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        results["loop"] = loop_name()
        run_loop(runner.run())
    except KeyboardInterrupt:
        results["errors"].append("interrupted")
        log("interrupted: stopping every process")
    except Exception as exc:
        results["errors"].append(f"{type(exc).__name__}: {exc}")
        log(traceback.format_exc())
    finally:
        servers.stop_all()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_after"] = __import__("os").getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plots = [] if args.no_plots else report.plots(results, args.out)
    (args.out / "results.md").write_text(report.markdown(results, plots))
    log(f"done in {results['duration_s']} s: {args.out / 'results.md'}")
    with contextlib.suppress(Exception):
        servers.stop_all()
    return 1 if "interrupted" in results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
