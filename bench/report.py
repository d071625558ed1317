"""Turn the measured results into ``results.md`` and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ALTERNATIVES = ("starlette", "flask-gthread", "flask-sync")
ORDER = ("gateway", "starlette", "flask-gthread", "flask-sync", "floor", "provider")


def _f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10 or digits == 0:
            text = f"{value:.{min(digits, 1)}f}"
        else:
            text = f"{value:.{digits}f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + unit


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference <= 0:
        return "–"
    return f"{value / reference:.2f}×" if value / reference < 10 else f"{value / reference:.0f}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _servers(results: dict[str, Any], fig: dict[str, Any]) -> list[str]:
    return [name for name in ORDER if name in fig]


def _best(values: dict[str, float | None], lowest: bool = True) -> tuple[str | None, float | None]:
    """The best alternative (not the gateway, not the lower bound) for a figure."""
    candidates = {k: v for k, v in values.items() if k in ALTERNATIVES and v is not None}
    if not candidates:
        return None, None
    name = (min if lowest else max)(candidates, key=lambda k: candidates[k])  # type: ignore[arg-type, return-value]
    return name, candidates[name]


def _label(results: dict[str, Any], name: str) -> str:
    return str(_get(results, "specs", name, "label") or name)


def _failed(value: Any) -> str | None:
    return value.get("failed") if isinstance(value, dict) else None


# --------------------------------------------------------------------------- markdown


def markdown(results: dict[str, Any], plots: list[str]) -> str:
    figs = results.get("figures", {})
    m = results.get("machine", {})
    out = ["# Benchmark: the gateway against the alternatives\n"]
    out.append(f"{m.get('date', '')}, `{results.get('mode')}` run, "
               f"{results.get('duration_s')} s. Written by `make bench` "
               "(`python -m bench.run`); every full run overwrites this file and the plots.\n")
    out += [_glance(results), _machine(results), _how(results), _targets(results)]
    sections = [
        ("1", "## 1. Added time to first token, one stream at a time\n", _fig1),
        ("2", "## 2. 200 concurrent streams (50 tokens, 20 ms apart)\n", _fig2),
        ("3", "## 3. Most concurrent streams held at 10 tokens/s\n", _fig3),
        ("4", "## 4. Memory per held stream (1 token/s)\n", _fig4),
        ("5", "## 5. CPU seconds per 1,000 tokens relayed\n", _fig5),
        ("6", "## 6. DELETE to the provider's connection closed\n", _fig6),
        ("7", "## 7. Client drop to the provider's connection closed\n", _fig7),
        ("8", "## 8. Reconnect to the first replayed event\n", _fig8),
        ("9", "## 9. Coalescing: the gateway with `coalesce_ms` against none\n", _fig9),
    ]
    for key, title, render in sections:
        out.append(title)
        if key not in figs:
            out.append("Not measured in this run.\n")
            continue
        out.append(render(results, figs[key]))
    out.append("## Profile\n\nNot part of this run: `python -m bench.profile` samples the "
               "gateway's worker with py-spy while it relays tokens and writes "
               "`bench/results/profile/profile.md` (where the time goes per token) and "
               "`stacks.txt` (collapsed stacks, not committed).\n")
    if plots:
        out.append("## Plots\n")
        out += [f"![{p}]({p})\n" for p in plots]
    out.append(_load(results))
    if results.get("notes"):
        out.append("## Notes\n")
        out += [f"- {n}" for n in results["notes"]]
        out.append("")
    if results.get("errors"):
        out.append("## Errors\n")
        out += [f"- {e}" for e in results["errors"]]
        out.append("")
    return "\n".join(out) + "\n"


def _glance(results: dict[str, Any]) -> str:
    f = results.get("figures", {})
    lb1 = _get(f, "1", "provider", "ttft_ms")
    lb2 = _get(f, "2", "provider", "ttft_ms")
    rows = []
    names = [n for n in ORDER if any(n in (f.get(k) or {}) for k in f)]
    for name in names:
        steps = _get(f, "3", name) or {}
        held = max((int(n) for n, st in steps.items() if st.get("holds")), default=0)
        broke = [int(n) for n, st in steps.items() if not st.get("holds")]
        mem = [v for k, v in (_get(f, "4", name) or {}).items()
               if not _failed(v) and "silent" not in k]
        drop = _get(f, "7", name, "streaming")
        drop_text = "–"
        if drop and not _failed(drop):
            drop_text = (_f(drop["ms"]["p99"], 2) if drop["closed"] == drop["n"]
                         else f"{drop['closed']}/{drop['n']} closed by the {drop['cap_s']:g} s cap")
        rows.append([
            _label(results, name),
            _f(_diff(_get(f, "1", name, "ttft_ms"), lb1, "p50"), 2) + " / "
            + _f(_diff(_get(f, "1", name, "ttft_ms"), lb1, "p99"), 2),
            _f(_diff(_get(f, "2", name, "ttft_ms"), lb2, "p50")) + " / "
            + _f(_diff(_get(f, "2", name, "ttft_ms"), lb2, "p99")),
            _f(_get(f, "2", name, "gap_ms", "p99")),
            "–" if not steps else (f"{held:,}" if held else
                                   f"< {min(int(n) for n in steps):,}") + (
                f" (broke at {min(broke):,})" if broke else " (no step broke)"),
            " / ".join(f"{_f(m['rss_per_stream_kib'])} (n={int(m['n']):,})" for m in mem
                       if m["n"] >= 100) or ("– (holds 5 streams)" if mem else "–"),
            _f(_get(f, "5", name, "us_per_token")),
            drop_text,
        ])
    return "## Results at a glance\n\n" + _table(
        ["server", "1. added TTFT, lone, p50 / p99 ms", "2. added TTFT at 200, p50 / p99 ms",
         "2. gap p99 at 200, ms", "3. streams held at 10 tok/s", "4. KiB per stream",
         "5. CPU µs per token", "7. drop → provider closed, p99 ms"], rows) + (
        "\nThe lower bound's own row is 0 for added times by definition; details, ratios "
        "and definitions below.\n")


def _machine(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    v = m.get("versions", {})
    quiet = results.get("quiet")
    quiet_text = ("not checked (smoke run)" if quiet is None else
                  f"{'quiet' if quiet['quiet'] else 'NOT quiet'} after waiting "
                  f"{quiet['waited_s']} s (busy fraction of all cores, last 3 s windows: "
                  f"{', '.join(f'{x:.0%}' for x in quiet['busy_samples'])})")
    others = m.get("others_before") or []
    rows = [
        ["cores", f"{m.get('cores')} ({m.get('cpu_model', '')})"],
        ["memory", f"{m.get('memory_gib')} GiB"],
        ["kernel", f"Linux {m.get('kernel')}"],
        ["Python", f"{m.get('implementation')} {m.get('python')}"],
        ["fd limit (`ulimit -n`) the run had", f"{m.get('nofile_soft')} (hard {m.get('nofile_hard')})"],
        ["load generator loop", str(results.get("loop"))],
        ["commit", f"`{m.get('commit')}`" + (
            " with uncommitted changes to " + ", ".join(f"`{x}`" for x in m["gateway_changes"])
            if m.get("gateway_changes") else " (the gateway's files unchanged)")],
        ["load average before / after", f"{_loadavg(m.get('loadavg'))} / "
                                        f"{_loadavg(m.get('loadavg_after'))}"],
        ["quiet check before starting", quiet_text],
        ["other processes at the start", "; ".join(others) if others else "none above 1% CPU"],
        ["clock check", _clock(results.get("clock_check"))],
        ["versions", ", ".join(f"{k} {val}" for k, val in v.items())],
    ]
    return "## Machine\n\n" + _table(["", ""], rows)


def _loadavg(value: Any) -> str:
    return " ".join(f"{x:.2f}" for x in value) if value else "–"


def _clock(check: Any) -> str:
    if not check:
        return "–"
    return (f"{'passed' if check['ok'] else 'FAILED'}: in {check['samples']} samples the fake "
            "provider's time.monotonic() lay between two readings of the harness's "
            f"(widest window {check['widest_window_ms']:.2f} ms): CLOCK_MONOTONIC is system-wide, "
            "so provider-side close times compare with client-side times")


def _how(results: dict[str, Any]) -> str:
    s = results.get("settings", {})
    specs = results.get("specs", {})
    lines = ["## How it was run\n"]
    lines.append("Servers, one at a time, each against the same fake provider process:\n")
    for name in ORDER:
        if name in results.get("servers", []) or name in results.get("skipped", {}):
            skipped = results.get("skipped", {}).get(name)
            lines.append(f"- **{specs.get(name, {}).get('label', name)}**: "
                         f"{specs.get(name, {}).get('config', '')}"
                         + (f" — **{skipped}**" if skipped else ""))
    lines.append("""
- The gateway runs with the issue's environment: `OPENAI_API_KEY=x OPENAI_BASE_URL=<fake>/v1
  MODELS=openai/* RATELIMIT_*= MAX_STREAMS_PER_KEY=0 MAX_READERS_PER_KEY=0 MAX_ACTIVE_STREAMS=20000 HEARTBEAT_S=15`
  (plus `GRACEFUL_TIMEOUT_S=5 SHUTDOWN_MARGIN_S=3`, which only shortens its stop), requests
  `POST /v1/streams {"model": "openai/<name>", "prompt": "x", "resume_grace_s": 0}`.
  The alternatives (`bench/alternatives/`) take `POST /chat {"model", "prompt"}` and send
  `data: {"content": ...}` per delta, then `data: [DONE]`; the lower bound is the client
  reading the fake provider's own OpenAI stream. Each server keeps its default logging
  (gunicorn's access log for the gateway, uvicorn's access log).
- **Fake provider** (`bench/provider.py`): the OpenAI streaming wire format produced by the
  test fake's own code (`tests/fake_provider`), served by an asyncio/uvloop loop, tokens on an
  absolute schedule, each event one HTTP chunk; it records when each call's peer closed.
  The threaded test fake costs ~67 µs CPU per token and could not serve 2,000 streams at
  10 tokens/s on this machine, so it is not used for load.
- **Load generator** (`bench/client.py`): this process, asyncio on raw sockets, one
  `Protocol` per stream, `Connection: close`; per received chunk it only timestamps and
  appends; HTTP de-chunking, SSE parsing, JSON and the exact-content check run after each
  scenario. Its own CPU is measured (figures 3 and 5 below show it).
- **Times** are client-observed with `time.monotonic()`; a stream's time to first token runs
  from before its TCP connect to the arrival of the chunk completing its first token event.
  *Added* TTFT is a server's percentile minus the lower bound's same percentile. Gaps are
  between consecutive token events of a stream. Percentiles are nearest-rank; p99 of n
  samples is the ceil(0.99 n)-th smallest.
- **CPU** is utime + stime from `/proc/<pid>/stat` of the server's whole process tree
  (gunicorn master + workers), before and after the workload; **memory** is the sum of VmRSS
  (and PSS, which counts pages shared by forked workers once) of that tree.
""")
    lines.append(f"Counts: figure 1: {s.get('lone_n')} streams one after another (after "
                 f"{s.get('lone_warmup')} not counted); figure 2: {s.get('burst_n')} at once, "
                 f"{s.get('burst_reps')} times (once for the sync workers), "
                 f"{s.get('burst_deadline_s')} s at most; figure 3: steps "
                 f"{', '.join(str(n) for n in s.get('step_ns', []))}, {s.get('step_tokens')} "
                 f"tokens 100 ms apart, streams opened evenly over {s.get('step_ramp_s')} s, "
                 f"a fresh server per step; figure 4: streams opened at {s.get('mem_rate')}/s, "
                 f"sampled {s.get('mem_settle_s')} s after all have had a token; "
                 f"figure 5: {s.get('cpu_streams')} streams ({s.get('cpu_streams_sync')} for the "
                 f"sync workers, 5 at a time) of {s.get('cpu_tokens', [0])[0]} tokens "
                 f"{(s.get('cpu_delay') or 0) * 1000:.0f} ms apart, and of "
                 f"{s.get('cpu_tokens', [0, 0])[1]} for the per-token margin; figures 6 and 7: "
                 f"{s.get('cancel_n')} / {s.get('drop_n')} streams each, streaming (10 ms "
                 f"between tokens) and silent (one token, then nothing past the cap), cap "
                 f"{s.get('drop_cap_s')} s; figure 8: {s.get('resume_n')} reconnects each.\n")
    return "\n".join(lines) + "\n"


def _targets(results: dict[str, Any]) -> str:
    f = results.get("figures", {})
    lb1 = _get(f, "1", "provider", "ttft_ms")
    g1 = _get(f, "1", "gateway", "ttft_ms")
    g2 = _get(f, "2", "gateway", "ttft_ms")
    lb2 = _get(f, "2", "provider", "ttft_ms")
    rows = []

    def add(target: str, measured: float | None, limit: float, unit: str, note: str = "") -> None:
        met = "–" if measured is None else ("yes" if measured < limit else "**no**")
        rows.append([target, _f(measured, 2, unit) + note, met])

    cpu = _get(f, "5", "gateway")
    add("CPU per token relayed < 50 µs", _get(cpu, "us_per_token"), 50, " µs",
        f" (marginal {_f(_get(cpu, 'marginal_us_per_token'), 1, ' µs')})" if cpu else "")
    add("added TTFT, lone stream, median < 1 ms", _diff(g1, lb1, "p50"), 1, " ms")
    add("added TTFT, lone stream, p99 < 3 ms", _diff(g1, lb1, "p99"), 3, " ms")
    add("added TTFT at 200 streams, p99 < 50 ms", _diff(g2, lb2, "p99"), 50, " ms")
    steps = _get(f, "3", "gateway") or {}
    step1000 = steps.get("1000")
    if step1000 and not _failed(step1000):
        rows.append(["1,000 streams at 10 tokens/s: no error, exact, gap p99 < 250 ms",
                     f"{step1000['ok']}/1000 exact, gap p99 {_f(step1000['gap_ms']['p99'])} ms",
                     "yes" if step1000.get("holds") else "**no**"])
    else:
        rows.append(["1,000 streams at 10 tokens/s", "not reached" if steps else "–",
                     "**no**" if steps else "–"])
    mem = _get(f, "4", "gateway") or {}
    for key in sorted(mem, key=lambda k: (int(k.split()[0]), k)):
        big = mem[key]
        if _failed(big) or int(key.split()[0]) < max(int(k.split()[0]) for k in mem):
            continue
        what = "held, then silent" if "silent" in key else "at 1 token/s"
        add(f"{int(big['n']):,} streams {what} < 32 KiB each", big.get("rss_per_stream_kib"),
            32, " KiB", f" ({big['alive']:,} of {big['n']:,} alive when sampled)")
    for key, what in (("7", "client drop"), ("6", "DELETE")):
        for mode in ("streaming", "silent"):
            value = _get(f, key, "gateway", mode, "ms", "p99")
            add(f"{what} → provider closed, p99 < 20 ms ({mode} provider)", value, 20, " ms")
    return "## The gateway's targets\n\n" + _table(["target", "measured", "met"], rows)


def _diff(a: Any, b: Any, key: str) -> float | None:
    if not a or not b or a.get(key) is None or b.get(key) is None:
        return None
    return float(a[key] - b[key])


def _fig1(results: dict[str, Any], fig: dict[str, Any]) -> str:
    lb = _get(fig, "provider", "ttft_ms")
    rows = []
    adds = {n: _diff(_get(fig, n, "ttft_ms"), lb, "p50") for n in fig}
    best, best_add = _best(adds)
    for name in _servers(results, fig):
        v = fig[name]
        if _failed(v):
            rows.append([_label(results, name), f"failed: {_failed(v)}"] + ["–"] * 7)
            continue
        t = v["ttft_ms"]
        rows.append([_label(results, name), _f(t["p50"], 2), _f(t["p99"], 2),
                     _f(_diff(t, lb, "p50"), 2), _f(_diff(t, lb, "p99"), 2),
                     _ratio(t["p50"], lb and lb["p50"]),
                     _ratio(_diff(t, lb, "p50"), best_add) if name != "provider" else "–",
                     _f(_get(v, "to_provider_ms", "p50"), 2),
                     _f(_get(v, "provider_to_client_ms", "p50"), 2),
                     f"{v['ok']}/{v['n']}"])
    text = _table(["server", "TTFT p50 ms", "TTFT p99 ms", "added p50 ms", "added p99 ms",
                   "TTFT × lower bound (p50)", "added × best alternative (p50)",
                   "client → provider has the request, p50 ms",
                   "provider wrote token → client has it, p50 ms", "exact"], rows)
    return text + (f"\nBest alternative for added TTFT: {_label(results, best)}. " if best else "\n") + \
        "The last two columns split the time with the provider's own clock (same " \
        "CLOCK_MONOTONIC): the lower bound's first is the connect and the request itself.\n"


def _fig2(results: dict[str, Any], fig: dict[str, Any]) -> str:
    lb = fig.get("provider") or {}
    lbt, lbg = lb.get("ttft_ms"), lb.get("gap_ms")
    adds = {n: _diff(_get(fig, n, "ttft_ms"), lbt, "p99") for n in fig}
    best, best_add = _best(adds)
    rows = []
    for name in _servers(results, fig):
        v = fig[name]
        if _failed(v):
            rows.append([_label(results, name), f"failed: {_failed(v)}"] + ["–"] * 8)
            continue
        t, g = v["ttft_ms"], v["gap_ms"]
        rows.append([_label(results, name), f"{v['ok']}/{v['n']}", _f(t["p50"]), _f(t["p99"]),
                     _f(_diff(t, lbt, "p50")), _f(_diff(t, lbt, "p99")),
                     _ratio(_diff(t, lbt, "p99"), best_add) if name != "provider" else "–",
                     _f(g["p50"]), _f(g["p99"]), _ratio(g["p99"], lbg and lbg["p99"]),
                     ", ".join(f"{_f(w)} s" for w in v.get("wall_s", []))])
    errors = [f"- {_label(results, n)}: " + "; ".join(f"{k} ×{c}" for k, c in v["errors"].items())
              for n, v in fig.items() if isinstance(v, dict) and v.get("errors")]
    return _table(["server", "complete & exact", "TTFT p50 ms", "TTFT p99 ms", "added p50 ms",
                   "added p99 ms", "added p99 × best alternative", "gap p50 ms", "gap p99 ms",
                   "gap p99 × lower bound", "wall per burst"], rows) + \
        (f"\nBest alternative for added TTFT p99: {_label(results, best)}.\n" if best else "") + \
        ("\nIncomplete streams:\n\n" + "\n".join(errors) + "\n" if errors else "")


def _fig3(results: dict[str, Any], fig: dict[str, Any]) -> str:
    held: dict[str, float | None] = {}
    for name, steps in fig.items():
        held[name] = max((float(n) for n, st in steps.items() if st.get("holds")), default=0.0)
    best, best_held = _best(held, lowest=False)
    rows = []
    for name in _servers(results, fig):
        steps = fig[name]
        broke = next((st for n, st in steps.items() if not st.get("holds")), None)
        why = "–"
        if broke is not None:
            if _failed(broke):
                why = f"{_failed(broke)}"
            else:
                why = (f"{broke['n']:,}: {broke['ok']:,} complete & exact, gap p99 "
                       f"{_f(broke['gap_ms']['p99'])} ms, TTFT p99 "
                       f"{_f(broke['ttft_ms']['p99'])} ms" + (
                           "; " + "; ".join(f"{k} ×{c}" for k, c in broke["errors"].items())
                           if broke.get("errors") else ""))
        h = held[name]
        first = min((int(n) for n in steps), default=0)
        rows.append([_label(results, name), f"{int(h or 0):,}" if h else f"< {first:,}",
                     why, _ratio(h, best_held) if name != "provider" and h else "–"])
    text = _table(["server", "most streams held", "first step that broke", "× best alternative"],
                  rows)
    text += (f"\nBest alternative: {_label(results, best)}.\n" if best else "")
    text += ("\n*Holds*: every stream answers 200, ends with its terminal event, its text is "
             "exactly the provider's, the p99 of all inter-token gaps (ramp included) is under "
             "250 ms, and the p99 time to first token is under 1 s (a stream kept waiting "
             "for a worker is not held). Steps stop at the first that breaks; the lower bound "
             "is run one step past the best server.\n\nEvery step:\n\n")
    rows = []
    for name in _servers(results, fig):
        for n, st in fig[name].items():
            if _failed(st):
                rows.append([_label(results, name), n, f"failed: {_failed(st)}"] + ["–"] * 8)
                continue
            rows.append([_label(results, name), f"{int(n):,}", "yes" if st["holds"] else "**no**",
                         f"{st['ok']:,}", f"{st['peak_open']:,}", _f(st["gap_ms"]["p50"]),
                         _f(st["gap_ms"]["p99"]), _f(st["ttft_ms"]["p99"]),
                         _f(st["server_cpu_s"] / st["wall_s"], 2),
                         _f(st["provider_cpu_s"] / st["wall_s"], 2),
                         _f(st["loadgen_cpu_s"] / st["wall_s"], 2)])
    return text + _table(["server", "streams", "holds", "exact", "peak open", "gap p50 ms",
                          "gap p99 ms", "TTFT p99 ms", "server cores", "provider cores",
                          "load generator cores"], rows)


def _fig4(results: dict[str, Any], fig: dict[str, Any]) -> str:
    # Compared: rows of at least 100 streams (the sync workers' 5 streams say nothing per
    # stream: their memory is allocated before any), the largest size each server ran.
    per: dict[str, float | None] = {}
    for name, sizes in fig.items():
        ok = [v for k, v in sizes.items() if not _failed(v) and v.get("rss_per_stream_kib")
              and "silent" not in k and v["n"] >= 100]
        per[name] = ok[-1]["rss_per_stream_kib"] if ok else None
    best, best_value = _best(per)
    quiet = {name: next((v.get("rss_per_stream_kib") for k, v in sizes.items()
                         if "silent" in k and not _failed(v)), None)
             for name, sizes in fig.items()}
    best_quiet = _best(quiet)[1]
    rows = []
    for name in _servers(results, fig):
        for n, v in fig[name].items():
            if _failed(v):
                rows.append([_label(results, name), n, f"failed: {_failed(v)}"] + ["–"] * 7)
                continue
            size, _, silent = n.partition(" ")
            rows.append([_label(results, name), f"{int(size):,}" + (
                " (one token, then silent)" if silent else ""), f"{v['alive']:,}",
                         _f(v["base_rss_kib"] / 1024), _f(v["rss_kib"] / 1024),
                         _f(v["rss_per_stream_kib"]), _f(v["pss_per_stream_kib"]),
                         _f(v["total_rss_per_stream_kib"]),
                         _ratio(v["rss_per_stream_kib"], best_quiet if silent else best_value)
                         if name != "provider" and v["n"] >= 100 else "–"])
    fd = _get(results, "machine", "nofile_soft")
    return _table(["server", "streams", "alive when sampled", "RSS before MiB", "RSS with them MiB",
                   "KiB per stream (RSS delta)", "KiB per stream (PSS delta)",
                   "all RSS / streams KiB", "× best alternative"], rows) + \
        (f"\nBest alternative: {_label(results, best)}.\n" if best else "") + \
        (f"\nRan with `ulimit -n` {fd}. Memory is sampled once every stream has had its "
         "first token (or after 60 s more at most). *Alive*: open and received data in the "
         "last 2.5 s (for the silent rows: open and had its one token). "
         "The sync and gthread servers hold at most 5 and 256 streams (their workers/threads), "
         "so they were measured at that size; their memory is mostly allocated before any "
         "stream (last column); the 5-stream row is left out of the comparison. The lower "
         "bound's "
         "row is the fake provider's own process. The Starlette app uses `AsyncOpenAI()` as "
         "a blog post does, with the SDK's default pool of 1,000 connections: past 1,000 "
         "streams the others wait for a connection (its *alive* column).\n")


def _fig5(results: dict[str, Any], fig: dict[str, Any]) -> str:
    per = {n: _get(v, "us_per_token") for n, v in fig.items()}
    best, best_value = _best(per)
    rows = []
    for name in _servers(results, fig):
        v = fig[name]
        if _failed(v):
            rows.append([_label(results, name), f"failed: {_failed(v)}"] + ["–"] * 7)
            continue
        long = v["runs"][0]
        rows.append([_label(results, name),
                     f"{long['ok']}/{long['streams']} × {long['tokens_per_stream']} "
                     f"({v['concurrency']} at a time)",
                     _f(long["cpu_s"], 2), _f(v["cpu_s_per_1000_tokens"], 3),
                     _f(v["us_per_token"]), _f(v["marginal_us_per_token"]),
                     _ratio(v["us_per_token"], best_value) if name != "provider" else "–",
                     _f(v["provider_us_per_token"]), _f(v["loadgen_us_per_token"])])
    return _table(["server", "workload (exact/streams × tokens)", "server CPU s",
                   "CPU s per 1,000 tokens", "µs per token, all in", "µs per extra token",
                   "× best alternative", "fake provider µs/token", "load generator µs/token"],
                  rows) + \
        (f"\nBest alternative: {_label(results, best)}.\n" if best else "") + \
        ("\n*All in*: the server's CPU over the workload divided by the tokens relayed "
         "(stream set-up included). *Per extra token*: the difference between that workload "
         "and the same number of streams of fewer tokens, divided by the extra tokens: the "
         "cost of relaying one more token. The lower bound's row is the fake provider itself.\n")


def _close_rows(results: dict[str, Any], fig: dict[str, Any]) -> list[list[str]]:
    best: dict[str, float | None] = {}
    for mode in ("streaming", "silent"):
        values = {n: (_get(v, mode, "ms", "p99") if _get(v, mode, "closed") == _get(v, mode, "n")
                      else None) for n, v in fig.items()}
        best[mode] = _best(values)[1]
    rows = []
    for name in _servers(results, fig):
        v = fig[name]
        for mode in ("streaming", "silent"):
            m = v.get(mode) if isinstance(v, dict) else None
            if _failed(v) or not m:
                rows.append([_label(results, name), mode, f"failed: {_failed(v)}"] + ["–"] * 5)
                continue
            if _failed(m):
                rows.append([_label(results, name), mode, f"failed: {_failed(m)}"] + ["–"] * 5)
                continue
            outcomes = "; ".join(f"{k} ×{c}" for k, c in m["outcomes"].items())
            rows.append([_label(results, name), mode, f"{m['closed']}/{m['n']}",
                         _f(m["ms"]["p50"], 2), _f(m["ms"]["p99"], 2),
                         _ratio(m["ms"]["p99"], best[mode])
                         if m["closed"] == m["n"] and name != "provider" else "–", outcomes,
                         _f(_get(m, "tokens_sent_after", "p50"), 0)])
    return rows


HEAD_CLOSE = ["server", "provider", "closed within cap", "p50 ms", "p99 ms",
              "p99 × best alternative", "provider's record",
              "tokens the provider sent after, p50"]


def _fig6(results: dict[str, Any], fig: dict[str, Any]) -> str:
    return _table(HEAD_CLOSE, _close_rows(results, fig)) + (
        "\nFrom the `DELETE` request's first byte being written (on a connection already "
        "open) to the fake provider seeing its connection closed. Only the gateway has a "
        "`DELETE`: the alternatives give a client no way to stop a stream but to hang up "
        "(figure 7).\n")


def _fig7(results: dict[str, Any], fig: dict[str, Any]) -> str:
    return _table(HEAD_CLOSE, _close_rows(results, fig)) + (
        "\nFrom the client closing its socket (FIN) after its first token to the fake provider "
        "seeing its connection closed; `complete` means the provider was never hung up on "
        "and sent its whole answer. The gateway's streams ask for `resume_grace_s: 0`. "
        "The lower bound is the provider seeing its own client leave.\n" + (
        "\nWhy the Flask pattern does not close it: when the WSGI server's write fails it "
        "closes the view's generator, but the openai SDK's `Stream` sits in a reference "
        "cycle with its own `__stream__` generator (`self._iterator = self.__stream__()`), "
        "so the `finally: response.close()` inside it runs only when the cyclic garbage "
        "collector next visits that object: the provider connection stays open, and the "
        "answer keeps being generated (and billed), for an unbounded time. With a silent "
        "provider the worker does not even notice the client left: nothing is written. "
        "The async version closes because the cancellation is raised inside the SDK's "
        "generator.\n" if any(_get(fig, n, m, "closed") != _get(fig, n, m, "n")
                                for n in ("flask-sync", "flask-gthread") if n in fig
                                for m in ("streaming", "silent")) else ""))


def _fig8(results: dict[str, Any], fig: dict[str, Any]) -> str:
    v = fig.get("gateway") or {}
    if _failed(v):
        return f"failed: {_failed(v)}\n"
    rows = []
    for mode, what in (("running", "stream still running (grace 2 s)"),
                       ("ended", "stream already ended")):
        m = v.get(mode) or {}
        ms = m.get("ms") or {}
        rows.append([what, str(ms.get("n")), _f(ms.get("p50"), 2), _f(ms.get("p99"), 2),
                     str(m.get("failures"))])
    return _table(["case", "n", "p50 ms", "p99 ms", "failures"], rows) + (
        "\nGateway only (the alternatives cannot resume). The client reads 10 tokens, "
        "hangs up, and at once reconnects to `GET /v1/streams/<id>/events` with "
        "`Last-Event-ID: 5`: from before its connect to the arrival of event 6.\n")


def _fig9(results: dict[str, Any], fig: dict[str, Any]) -> str:
    v = fig.get("gateway") or {}
    if _failed(v):
        return f"failed: {_failed(v)}\n"
    rows = []
    runs = v.get("runs") or []
    for run in runs:
        base = next((r for r in runs if r["delay_ms"] == run["delay_ms"]
                     and r["coalesce_ms"] == 0), None)
        rows.append([f"{run['delay_ms']:g} ms", f"{run['coalesce_ms']:g}",
                     f"{run['ok']}/{run['streams']} × {run['tokens'] // max(1, run['ok'])}",
                     _f(run["events_per_stream"]), _f(run["events_per_s"], 0),
                     _f(run["us_per_token"]),
                     _ratio(run["us_per_token"], base["us_per_token"])
                     if base is not None and run is not base else "–"])
    return _table(["provider cadence", "coalesce_ms", "exact/streams × tokens",
                   "token events per stream", "token events per second",
                   "server µs per token, all in", "× without"], rows) + (
        "\nGateway only. The same workload (the fake provider sending each stream's tokens "
        "that many ms apart) with and without `coalesce_ms`: deltas of one kind arriving "
        "within the window are one event, the first token is never held. Every stream's "
        "text is checked exact.\n")


def _load(results: dict[str, Any]) -> str:
    rows = []
    for key, loads in sorted(results.get("load", {}).items()):
        if not loads:
            continue
        worst = max(loads, key=lambda x: x["other_cores"])
        mean = sum(x["other_cores"] * x["wall_s"] for x in loads) / max(
            1e-9, sum(x["wall_s"] for x in loads))
        rows.append([key, _f(sum(x["wall_s"] for x in loads)), f"{mean:.2f}",
                     f"{worst['other_cores']:.2f} ({worst['server']}"
                     f"{' ' + worst['slot'] if worst.get('slot') else ''})",
                     _f(float(sum(x.get("waited_s", 0) for x in loads)), 0)])
    return "## Load from other processes during the run\n\n" + _table(
        ["figure", "seconds", "other processes, mean cores", "worst scenario",
         "seconds waited for quiet before its scenarios"], rows) + (
        "\nAll CPU time on the machine (/proc/stat) minus this run's own processes "
        "(harness, fake provider, server), over each scenario: 0 means nothing else ran. "
        "Before each scenario the run waits (up to 60 s, 5 min in all) until other processes "
        "use less than 0.1 core over a second.\n")


# --------------------------------------------------------------------------- plots


def _plot_memory(sizes: dict[str, Any]) -> float | None:
    rows = [v for k, v in sizes.items() if not _failed(v) and "silent" not in k
            and v.get("n", 0) >= 100 and v.get("rss_per_stream_kib") is not None]
    return float(rows[-1]["rss_per_stream_kib"]) if rows else None


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """Write the PNGs; [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        results.setdefault("notes", []).append("plots skipped: matplotlib not installed")
        return []
    figs = results.get("figures", {})
    written = []
    colors = {"gateway": "#1f77b4", "starlette": "#2ca02c", "flask-gthread": "#ff7f0e",
              "flask-sync": "#d62728", "floor": "#9467bd", "provider": "#7f7f7f"}

    def bars(ax: Any, key: str, metric: str, title: str, unit: str, log: bool = True) -> None:
        fig = figs.get(key, {})
        names = [n for n in ORDER if n in fig and not _failed(fig[n])]
        for i, name in enumerate(names):
            p50 = _get(fig[name], metric, "p50")
            p99 = _get(fig[name], metric, "p99")
            ax.bar(i - 0.2, p50 or 0, 0.4, color=colors[name], label="p50" if i == 0 else None)
            ax.bar(i + 0.2, p99 or 0, 0.4, color=colors[name], alpha=0.5,
                   label="p99" if i == 0 else None)
        ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        if log and names:
            ax.set_yscale("log")
        if names:
            ax.legend(fontsize=8)

    if "1" in figs or "2" in figs:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        bars(axes[0], "1", "ttft_ms", "1. TTFT, one stream at a time", "ms")
        bars(axes[1], "2", "ttft_ms", "2. TTFT, 200 at once", "ms")
        bars(axes[2], "2", "gap_ms", "2. inter-token gap, 200 at once", "ms")
        fig.tight_layout()
        fig.savefig(out / "ttft.png", dpi=110)
        plt.close(fig)
        written.append("ttft.png")
    if "3" in figs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in ORDER:
            steps = figs["3"].get(name) or {}
            points = [(int(n), st["gap_ms"]["p99"]) for n, st in steps.items()
                      if not _failed(st) and st["gap_ms"]["p99"] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "o-", color=colors[name], label=name)
                for n, st in steps.items():
                    if not _failed(st) and not st["holds"] and st["gap_ms"]["p99"]:
                        ax.plot(int(n), st["gap_ms"]["p99"], "x", color="black", markersize=10)
        ax.axhline(250, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams at 10 tokens/s")
        ax.set_ylabel("inter-token gap p99, ms (x: step broke)")
        ax.set_title("3. Step up until it breaks", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "stepup.png", dpi=110)
        plt.close(fig)
        written.append("stepup.png")
    if "4" in figs or "5" in figs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title, unit, get in (
                (axes[0], "4", "4. memory per held stream (RSS delta, largest n >= 100)",
                 "KiB", _plot_memory),
                (axes[1], "5", "5. CPU per token relayed (all in)", "µs",
                 lambda v: v.get("us_per_token") if not _failed(v) else None)):
            data = figs.get(key, {})
            names = [n for n in ORDER if n in data and get(data[n]) is not None]
            ax.bar(range(len(names)), [get(data[n]) for n in names],
                   color=[colors[n] for n in names])
            ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(unit)
            ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(out / "resources.png", dpi=110)
        plt.close(fig)
        written.append("resources.png")
    if "7" in figs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, mode in zip(axes, ("streaming", "silent"), strict=True):
            data = figs["7"]
            names = [n for n in ORDER if n in data and isinstance(data[n].get(mode), dict)
                     and "ms" in data[n][mode]]
            cap = max((data[n][mode]["cap_s"] for n in names), default=5) * 1000
            for i, name in enumerate(names):
                m = data[name][mode]
                closed = m["closed"] == m["n"]
                p50 = m["ms"]["p50"] if closed else cap
                p99 = m["ms"]["p99"] if closed else cap
                ax.bar(i - 0.2, p50 or 0.001, 0.4, color=colors[name],
                       hatch=None if closed else "//")
                ax.bar(i + 0.2, p99 or 0.001, 0.4, color=colors[name], alpha=0.5,
                       hatch=None if closed else "//")
            ax.axhline(cap, color="black", linestyle=":", linewidth=1)
            ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms (p50, p99; hatched: not all closed by the cap)")
            ax.set_title(f"7. client drop → provider closed ({mode})", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "close.png", dpi=110)
        plt.close(fig)
        written.append("close.png")
    return written
