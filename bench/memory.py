"""Where the gateway worker's memory per held stream goes: ``python -m bench.memory``.

Starts the fake provider and the gateway (one gevent worker, the benchmark's
environment) with ``-c bench/tracemalloc.conf.py``: the usual settings, plus
tracemalloc in the worker and a SIGUSR2 snapshot handler. After a warm-up it
takes snapshot A, opens ``--streams`` streams that get one token and then
nothing for 600 s (figure 4's *silent* case), waits until each has its token
(plus ``--settle`` s), reads the worker's RSS, takes snapshot B and drops the
streams. Writes ``<out>/memory.md``: RSS per stream, traced bytes per stream,
the part tracemalloc does not see, the top allocation sites and files by
growth from A to B (``--frames`` > 1: also the top sites' tracebacks), the
growth as pymalloc and glibc malloc see it, and the GC-tracked objects per
stream by type. ``--frames 0``: no tracing, only RSS, the allocators' totals
and the object counts (a baseline without tracemalloc's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import figures, servers
from bench.client import Conn, run_loop
from bench.figures import Bench, Session

ROOT = servers.ROOT
OUT = ROOT / "bench" / "results" / "memory"
KIB = 1024.0


DATA_STACKS = (
    "*Frame data stacks*: since Python 3.11 a function's frame lives in a per-thread "
    "data stack, allocated in chunks of at least 16 KiB with `_PyObject_VirtualAlloc` "
    "(an anonymous mmap): not a pymalloc block, not glibc's heap, not traced. greenlet "
    "gives every greenlet its own data stack, so each greenlet that has run Python code "
    "keeps one chunk, of which the pages its deepest frames touched (one 4 KiB page for "
    "a shallow stack) are resident.\n")


@dataclass(frozen=True)
class TracedSpec(servers.Spec):
    """The gateway, under ``bench/tracemalloc.conf.py``."""

    out: str = ""  # TRACEMALLOC_OUT
    frames: int = 1

    def command(self, fd: int) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "bench/tracemalloc.conf.py",
                "--bind", f"fd://{fd}", "wsgi:app"]

    def env(self, fake_url: str) -> dict[str, str]:
        return {**super().env(fake_url), "TRACEMALLOC_OUT": self.out,
                "TRACEMALLOC_FRAMES": str(self.frames)}


@dataclass
class Snap:
    """One dump: the snapshot file and the worker's totals when it was taken."""

    path: Path
    info: dict[str, Any]


async def snapshot(worker: int, path: Path, timeout: float = 120) -> Snap:
    """SIGUSR2 to the worker, then wait for its ``.done`` marker."""
    done = Path(f"{path}.done")
    os.kill(worker, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no snapshot at {path} after {timeout} s")
        await asyncio.sleep(0.1)
    info = json.loads(Path(f"{path}.json").read_text())
    if "error" in info:
        raise RuntimeError(f"the worker failed to dump {path}: {info['error']}")
    return Snap(path, info)


def short(filename: str) -> str:
    """A path without its site-packages / checkout / stdlib prefix."""
    for anchor in ("/site-packages/", f"{ROOT}/", "/lib/python3.11/", "/lib/python3"):
        if anchor in filename:
            return filename.split(anchor, 1)[1]
    return filename


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the servers and the streams; return the numbers and the two snapshots' paths."""
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "snapshot"
    for old in args.out.glob("snapshot.*"):
        old.unlink()
    s = figures.Settings()
    spec = TracedSpec(**{**servers.SPECS["gateway"].__dict__, "out": str(prefix),
                         "frames": args.frames})
    provider = servers.Provider()
    session: Session | None = None
    try:
        bench = Bench(provider, s)
        session = Session(spec, provider)
        await figures.warm_up(bench, session)
        assert session.server is not None
        workers = servers.children_of(session.server.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker, found {workers}")
        worker = workers[0]
        n = args.streams
        ramp_s = n / s.mem_rate
        tokens = int(ramp_s + args.settle + 60)
        model = (await bench.scenario(tokens, record=False, delay=1.0, stall_after=1,
                                      stall_s=600))[0]
        await asyncio.sleep(args.settle)
        out: dict[str, Any] = {"n": n, "frames": args.frames, "worker": worker,
                               "rss_before_kib": servers.rss_kib([worker])}
        out["a"] = await snapshot(worker, Path(f"{prefix}.0"))
        out["rss_after_a_kib"] = servers.rss_kib([worker])

        async def hold(conns: list[Conn]) -> None:
            deadline = time.monotonic() + ramp_s + 60
            waiting = set(range(n))
            while time.monotonic() < deadline and waiting:
                await asyncio.sleep(0.05 if len(waiting) < 100 else 0.5)
                waiting = {i for i in waiting if not conns[i].closed.done() and not (
                    conns[i].chunks and figures._has_token(session.target, conns[i]))}
            out["no_token"] = len(waiting)
            await asyncio.sleep(args.settle)
            out["alive"] = sum(1 for c in conns if not c.closed.done()
                               and figures._has_token(session.target, c))
            out["errors"] = sum(1 for c in conns if c.error)
            out["rss_with_kib"] = servers.rss_kib([worker])
            out["b"] = await snapshot(worker, Path(f"{prefix}.1"))

        await bench.load("memory", session.target,
                         [session.request(model) for _ in range(n)],
                         rate=s.mem_rate, deadline_s=ramp_s + 300, hold=hold)
        return out
    finally:
        if session is not None:
            session.stop()
        provider.stop()
        servers.stop_all()


def allocators(a: dict[str, Any], b: dict[str, Any], n: int) -> list[str]:
    """RSS growth as the allocators see it (B - A, per stream)."""
    def per(value: float) -> str:
        return f"{value / KIB / n:.1f}"

    pa, pb = a["pymalloc"], b["pymalloc"]
    ma, mb = a["malloc"], b["malloc"]

    def dp(key: str) -> float:
        return float(pb.get(key, 0) - pa.get(key, 0))

    def dm(key: str) -> float:
        return float(mb[key] - ma[key])

    lost = sum(dp(k) for k in ("# bytes lost to pool headers", "# bytes lost to quantization",
                               "# bytes lost to arena alignment"))
    rows = ["| KiB per stream (B - A) | |", "|---|---|",
            f"| worker RSS (read by the worker) | {(b['rss_kib'] - a['rss_kib']) / n:.1f} |"]
    rss = (b["rss_kib"] - a["rss_kib"]) * KIB
    heap = dm("arena") + dm("hblkhd")
    if "bytes in arenas" in pa and "bytes in arenas" in pb:
        rows += [
            f"| pymalloc arenas (1 MiB mmaps, blocks <= 512 B) | {per(dp('bytes in arenas'))} |",
            f"| ... in live blocks | {per(dp('# bytes in allocated blocks'))} |",
            f"| ... free blocks in pools in use | {per(dp('# bytes in available blocks'))} |",
            f"| ... unused pools | {per(dp('bytes in unused pools'))} |",
            f"| ... pool headers, quantization, alignment | {per(lost)} |"]
    else:
        rows.append("| pymalloc arenas | n/a: `sys._debugmallocstats` says nothing of pymalloc "
                    "while tracemalloc hooks the allocators (see a `--frames 0` run) |")
    rows += [
        f"| glibc heap from the OS (brk arena + mmapped chunks) | "
        f"{per(dm('arena') + dm('hblkhd'))} |",
        f"| ... in use (`uordblks` + `hblkhd`) | {per(dm('uordblks') + dm('hblkhd'))} |",
        f"| ... free in the heap (`fordblks`) | {per(dm('fordblks'))} |",
    ]
    if "bytes in arenas" in pa and "bytes in arenas" in pb:
        rows.append("| **the rest: neither pymalloc nor glibc's heap** (RSS - both; mostly "
                    "greenlets' frame data stacks, see below) | "
                    f"**{per(rss - dp('bytes in arenas') - heap)}** |")
    if b.get("tracing"):
        rows += [f"| traced (`get_traced_memory`) | {per(b['traced'] - a['traced'])} |",
                 "| tracemalloc's own tables (part of the glibc heap) | "
                 f"{per(b['tracemalloc_memory'] - a['tracemalloc_memory'])} |"]
    return rows


def sizes(snap_a: tracemalloc.Snapshot, snap_b: tracemalloc.Snapshot
          ) -> dict[tuple[str, int], collections.Counter[int]]:
    """(file, line) of the most recent frame -> block size -> count, B minus A."""
    out: dict[tuple[str, int], collections.Counter[int]] = collections.defaultdict(
        collections.Counter)
    for sign, snap in ((1, snap_b), (-1, snap_a)):
        for trace in snap.traces:
            frame = trace.traceback[-1]  # tracebacks run from the oldest frame
            out[(frame.filename, frame.lineno)][trace.size] += sign
    return out


def big_blocks(counts: collections.Counter[int], n: int) -> str:
    """The block sizes holding the most bytes at a site, per stream: ``count x size``."""
    top = sorted(((size * c, size, c) for size, c in counts.items() if c > 0), reverse=True)
    return ", ".join(f"{c / n:.2g} x {size:,} B" for _, size, c in top[:3])


def table(stats: list[tracemalloc.StatisticDiff], n: int, top: int, key: str,
          by_size: dict[tuple[str, int], collections.Counter[int]] | None = None) -> list[str]:
    head = f"| {key} | KiB / stream | blocks / stream | avg block B |"
    lines = [head + (" biggest block sizes (per stream x size) |" if by_size else ""),
             "|---|---|---|---|" + ("---|" if by_size else "")]
    for stat in stats[:top]:
        frame = stat.traceback[-1]
        where = short(frame.filename) + (f":{frame.lineno}" if key == "site" else "")
        avg = stat.size_diff / stat.count_diff if stat.count_diff else 0
        line = (f"| `{where}` | {stat.size_diff / KIB / n:.2f} | {stat.count_diff / n:.2f} | "
                f"{avg:.0f} |")
        if by_size is not None:
            line += f" {big_blocks(by_size[(frame.filename, frame.lineno)], n)} |"
        lines.append(line)
    return lines


def report(out: dict[str, Any], top_sites: int = 40, top_files: int = 20) -> str:
    n = out["n"]
    a, b = out["a"], out["b"]
    rss0, rss_a, rss1 = out["rss_before_kib"], out["rss_after_a_kib"], out["rss_with_kib"]
    rss_per = (rss1 - rss0) / n
    lines = [
        "# Where the gateway worker's memory per held stream goes\n",
        f"{n:,} streams held, each had one token and then nothing (figure 4's silent "
        f"case); {out['alive']:,} alive when sampled, {out['no_token']} without a token, "
        f"{out['errors']} errors. tracemalloc frames: {out['frames']}"
        f"{' (not tracing)' if not out['frames'] else ''}.\n",
        "| | |", "|---|---|",
        f"| worker RSS before (after warm-up) | {rss0 / KIB:.1f} MiB |",
        f"| worker RSS after snapshot A | {rss_a / KIB:.1f} MiB |",
        f"| worker RSS with the streams (before snapshot B) | {rss1 / KIB:.1f} MiB |",
        f"| **RSS per stream** (with - before) | **{rss_per:.1f} KiB** |",
        f"| RSS per stream (with - after snapshot A) | {(rss1 - rss_a) / n:.1f} KiB |",
    ]
    if not b.info.get("tracing"):
        lines += ["", "## RSS growth as the allocators see it\n",
                  *allocators(a.info, b.info, n), "", DATA_STACKS]
        return "\n".join(lines + types_table(a.info, b.info, n))
    traced_per = (b.info["traced"] - a.info["traced"]) / KIB / n
    overhead_per = (b.info["tracemalloc_memory"] - a.info["tracemalloc_memory"]) / KIB / n
    snap_a = tracemalloc.Snapshot.load(str(a.path))
    snap_b = tracemalloc.Snapshot.load(str(b.path))
    by_line = snap_b.compare_to(snap_a, "lineno")
    by_file = snap_b.compare_to(snap_a, "filename")
    lines += [
        f"| **traced per stream** (B - A, `get_traced_memory`) | **{traced_per:.1f} KiB** |",
        f"| traced per stream (sum of the sites' size_diff) | "
        f"{sum(st.size_diff for st in by_line) / KIB / n:.1f} KiB |",
        f"| tracemalloc's own memory per stream (in RSS, not traced) | {overhead_per:.1f} KiB |",
        f"| **not seen by tracemalloc** (RSS - traced) | **{rss_per - traced_per:.1f} KiB** |",
        f"| ... less tracemalloc's own memory | {rss_per - traced_per - overhead_per:.1f} KiB |",
        "",
        "*Not seen*: memory malloc'ed outside Python's allocators (C libraries' own "
        "malloc), allocator overhead (malloc chunk headers, pymalloc pools and arenas not "
        "full, freed memory not given back), tracemalloc's own tables (the row above), and "
        "pages touched by the snapshot itself. Greenlet stack copies go through "
        "`PyMem_Realloc`, so they are traced, under the line that switched away. Kernel "
        "socket buffers are not in RSS at all.\n",
        DATA_STACKS,
        "## RSS growth as the allocators see it\n",
        *allocators(a.info, b.info, n), "",
        f"## Top {top_sites} allocation sites (growth from A to B)\n",
        *table(by_line, n, top_sites, "site", sizes(snap_a, snap_b)), "",
        f"## Top {top_files} files\n",
        *table(by_file, n, top_files, "file"), "",
    ]
    if out["frames"] > 1:
        by_tb = snap_b.compare_to(snap_a, "traceback")
        lines += ["## Top 10 tracebacks (most recent call first)\n"]
        for stat in by_tb[:10]:
            lines.append(f"**{stat.size_diff / KIB / n:.2f} KiB, {stat.count_diff / n:.2f} "
                         "blocks per stream**\n\n```")
            for frame in reversed(stat.traceback):
                lines.append(f"{short(frame.filename)}:{frame.lineno}")
            lines += ["```", ""]
    return "\n".join(lines + types_table(a.info, b.info, n))


def types_table(a: dict[str, Any], b: dict[str, Any], n: int) -> list[str]:
    types_a, types_b = a["types"], b["types"]
    grown = sorted(((types_b.get(t, 0) - types_a.get(t, 0), t) for t in types_b),
                   reverse=True)
    lines = ["## GC-tracked objects per stream, by type (B - A, top 25)\n",
             "| type | per stream |", "|---|---|"]
    for count, name in grown[:25]:
        lines.append(f"| `{name}` | {count / n:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--frames", type=int,
                        default=int(os.environ.get("TRACEMALLOC_FRAMES", "1")),
                        help="tracemalloc frames (default $TRACEMALLOC_FRAMES or 1); "
                             "0: no tracing, only RSS and the allocators' totals")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait before the baseline and after the last token")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out = run_loop(measure(args))
    text = report(out)
    (args.out / "memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
