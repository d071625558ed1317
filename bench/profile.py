"""Profile the gateway's worker while it relays tokens: ``python -m bench.profile``.

Starts the fake provider and the gateway (one gevent worker, the benchmark's
environment), keeps ``--streams`` streams of ``--delay``-spaced tokens running,
and samples the worker with py-spy (``pip install -r requirements-bench.txt``)
for ``--seconds``. Writes to ``--out`` (default ``bench/results/profile``):

* ``stacks.txt``: py-spy's collapsed stacks (feed it to any flame-graph tool),
  kept out of git (.gitignore): a raw dump, large, and specific to one run;
* ``profile.md``: the worker's CPU per token over the window, then where the
  samples went: by package, by function (self), and by function (inclusive).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import figures, servers
from bench.client import Conn, connect, run_loop, tokens_of
from bench.figures import Bench, Session

OUT = Path(__file__).resolve().parent / "results" / "profile"

# A frame's path (py-spy shortens it to the module path) -> a package, for the summary.
PACKAGES = {
    "app": "app (the gateway)", "config": "config (gunicorn worker class)", "gevent": "gevent",
    "greenlet": "greenlet", "httpcore2": "httpcore2", "httpx2": "httpx2", "h11": "h11",
    "openai": "openai SDK", "pydantic": "pydantic", "pydantic_core": "pydantic",
    "flask": "flask", "werkzeug": "werkzeug", "gunicorn": "gunicorn", "json": "json (stdlib)",
    "logging": "logging (stdlib)", "prometheus_client": "prometheus_client",
    "flask_limiter": "flask-limiter", "limits": "flask-limiter", "anyio": "anyio",
    "typing.py": "typing (stdlib)", "typing_extensions.py": "typing_extensions",
    "inspect.py": "inspect (stdlib)", "threading.py": "threading (patched by gevent)",
    "socket.py": "socket (stdlib)", "ssl.py": "ssl (stdlib)", "selectors.py": "selectors",
}


def package_of(frame: str) -> str:
    match = re.search(r"\(([^:)]+)", frame)
    path = match.group(1) if match else "?"
    first = path.split("/", 1)[0]
    return PACKAGES.get(first, f"other ({first})")


def function_of(frame: str) -> str:
    """``name (path:line)`` -> ``name (short/path)``, lines merged."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    name, path = match.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "main", "python3.11"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    return f"{name} ({'/'.join(parts[-3:])})"


def summarize(stacks: Path, cpu_s: float, tokens: int, seconds: float, rate: int,
              sampled: tuple[float, int]) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_time[function_of(leaf)] += count
        packages[package_of(leaf)] += count
        for name in {function_of(f) for f in frames}:
            inclusive[name] += count
    per_token = cpu_s / tokens * 1e6 if tokens else 0.0
    sampled_cpu, sampled_tokens = sampled
    lines = [
        "# Where the gateway's worker spends its time\n",
        f"Without the profiler, over {seconds:.0f} s the worker used {cpu_s:.2f} CPU seconds "
        f"for {tokens:,} tokens relayed: **{per_token:.0f} µs per token**, all in (stream "
        f"set-up included). Then py-spy sampled it at {rate} Hz (only while it held the GIL) "
        f"for {seconds:.0f} s without pausing it: {total:,} samples; meanwhile {sampled_cpu:.2f} CPU s for "
        f"{sampled_tokens:,} tokens ({sampled_cpu / max(1, sampled_tokens) * 1e6:.0f} µs per "
        "token under sampling).\n",
        "*µs per token* below: a share of the samples times the unprofiled µs per token.\n",
        "## By package (self time)\n",
        "| package | share | µs per token |", "|---|---|---|",
    ]
    for name, count in packages.most_common(20):
        lines.append(f"| {name} | {count / total:.1%} | {count / total * per_token:.1f} |")
    lines += ["", "## Functions by self time\n", "| function | share | µs per token |",
              "|---|---|---|"]
    for name, count in self_time.most_common(30):
        lines.append(f"| `{name}` | {count / total:.1%} | {count / total * per_token:.1f} |")
    lines += ["", "## Functions by inclusive time\n", "| function | share | µs per token |",
              "|---|---|---|"]
    for name, count in inclusive.most_common(45):
        lines.append(f"| `{name}` | {count / total:.1%} | {count / total * per_token:.1f} |")
    return "\n".join(lines) + "\n"


async def profile(args: argparse.Namespace) -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    provider = servers.Provider()
    session: Session | None = None
    try:
        bench = Bench(provider, figures.Settings())
        session = Session(servers.SPECS["gateway"], provider)
        await figures.warm_up(bench, session)
        assert session.server is not None
        workers = servers.children_of(session.server.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker, found {workers}")
        worker = workers[0]
        stream_s = args.tokens * args.delay
        model = (await bench.scenario(args.tokens, delay=args.delay, record=False))[0]
        target = session.target
        stop_at = time.monotonic() + stream_s + 2 * args.seconds + 10
        conns: list[Conn] = []

        async def slot(delay: float) -> None:  # one stream after another
            await asyncio.sleep(delay)
            while time.monotonic() < stop_at:
                conn = Conn(target.stream_request(model))
                conns.append(conn)  # counted even if still open when the window ends
                await connect(target, conn)
                try:
                    await asyncio.wait_for(asyncio.shield(conn.closed), stream_s + 10)
                except TimeoutError:
                    conn.abort("too slow")

        tasks = [asyncio.get_running_loop().create_task(slot(i * stream_s / args.streams))
                 for i in range(args.streams)]
        await asyncio.sleep(stream_s + 1)  # every slot is streaming
        args.out.mkdir(parents=True, exist_ok=True)
        stacks = args.out / "stacks.txt"
        # First a window without the profiler: the worker's own CPU per token.
        a0, acpu0 = time.monotonic(), servers.cpu_seconds([worker])
        await asyncio.sleep(args.seconds)
        a1, acpu = time.monotonic(), servers.cpu_seconds([worker]) - acpu0
        t0, cpu0 = time.monotonic(), servers.cpu_seconds([worker])
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(worker), "--rate", str(args.rate), "--duration",
            str(args.seconds), "--format", "raw", "--output", str(stacks),
            *([] if args.blocking else ["--nonblocking"]), "--gil",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await spy.communicate()
        t1, cpu = time.monotonic(), servers.cpu_seconds([worker]) - cpu0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            conn.abort("done")
        if spy.returncode != 0 or not stacks.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        # The tokens that reached the client while py-spy looked.
        window_tokens = plain_tokens = 0
        for conn in conns:
            tokens, _ = tokens_of("gateway", conn.parse().events)
            window_tokens += sum(1 for at, _ in tokens if t0 <= at <= t1)
            plain_tokens += sum(1 for at, _ in tokens if a0 <= at <= a1)
        text = summarize(stacks, acpu, plain_tokens, args.seconds, args.rate,
                         (cpu, window_tokens))
        text += (f"\nWorkload: {args.streams} streams of {args.tokens} tokens "
                 f"{args.delay * 1000:.0f} ms apart, each followed by the next one at once "
                 f"({args.streams / args.delay:,.0f} tokens/s asked for; "
                 f"{window_tokens / (t1 - t0):,.0f} tokens/s relayed while sampled).\n")
        (args.out / "profile.md").write_text(text)
        return text
    finally:
        if session is not None:
            session.stop()
        provider.stop()
        servers.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--blocking", action="store_true",
                        help="pause the worker for each sample (exact stacks, but it slows "
                             "the worker down a lot)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = run_loop(profile(args))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
