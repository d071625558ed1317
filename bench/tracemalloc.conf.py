"""gunicorn settings for memory tracing: ``gunicorn -c bench/tracemalloc.conf.py wsgi:app``.

Everything in ``config/gunicorn.conf.py``, plus, in each worker (after that
file's own ``post_worker_init``), ``tracemalloc.start(TRACEMALLOC_FRAMES)``
(default 1) and a SIGUSR2 handler. The k-th SIGUSR2 (k = 0, 1, ...) writes the
worker's totals to ``$TRACEMALLOC_OUT.<k>.json`` (RSS, glibc's ``mallinfo2``,
pymalloc's totals, traced bytes, tracemalloc's own memory, GC-tracked objects
by type), a tracemalloc snapshot to ``$TRACEMALLOC_OUT.<k>``, and last an empty
``$TRACEMALLOC_OUT.<k>.done``, so that a driver (``python -m bench.memory``)
knows the dump is complete.

``TRACEMALLOC_FRAMES=0``: no tracing and no snapshot, only the totals (the
allocators' view without tracemalloc's own cost).

Like the file it extends, this runs in the master before gevent patches
anything: tracemalloc, gevent and ctypes are imported inside the worker only.
"""

import os
import runpy

_base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "config", "gunicorn.conf.py"))
globals().update({k: v for k, v in _base.items() if not k.startswith("__")})
_base_post_worker_init = _base.get("post_worker_init")


def _malloc_stats() -> dict[str, int]:
    """glibc's ``mallinfo2()``: the C heap, whoever asked for it."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = Mallinfo2
    info = mallinfo2()
    return {name: getattr(info, name) for name, _ in Mallinfo2._fields_}


def _pymalloc_stats() -> dict[str, int]:
    """The totals of ``sys._debugmallocstats()`` (it prints to fd 2)."""
    import re
    import sys
    import tempfile

    with tempfile.TemporaryFile("w+") as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    stats: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^(.*?)\s+=\s+([\d,]+)\s*$", line)
        if not match:
            continue
        key, value = match.group(1).strip(), int(match.group(2).replace(",", ""))
        if "unused pools" in key:
            key = "bytes in unused pools"
        elif "arenas *" in key:
            key = "bytes in arenas"
        stats.setdefault(key, value)
    return stats


def _dump(path: str) -> None:
    """Totals to ``path.json``, a snapshot to ``path`` if tracing, then ``path.done``."""
    import collections
    import gc
    import json
    import tracemalloc

    try:
        # The totals first: a snapshot's own objects would count in them.
        with open("/proc/self/statm") as f:
            rss_kib = int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        info: dict[str, object] = {
            "rss_kib": rss_kib, "malloc": _malloc_stats(), "pymalloc": _pymalloc_stats(),
            "tracing": tracemalloc.is_tracing()}
        if tracemalloc.is_tracing():
            traced, peak = tracemalloc.get_traced_memory()
            info.update(traced=traced, peak=peak,
                        tracemalloc_memory=tracemalloc.get_tracemalloc_memory())
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(path)
            del snapshot
        types: collections.Counter[str] = collections.Counter()
        for o in gc.get_objects():
            kind = type(o)
            module = kind.__module__ if isinstance(kind.__module__, str) else "?"
            types[f"{module}.{kind.__qualname__}"] += 1
        info["types"] = dict(types)
    except Exception as exc:
        info = {"error": repr(exc)}
        raise
    finally:
        with open(path + ".json", "w") as f:
            json.dump(info, f)
        with open(path + ".done", "w"):
            pass


def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn hook
    """The base hook, then tracemalloc and the SIGUSR2 snapshot handler."""
    if _base_post_worker_init is not None:
        _base_post_worker_init(worker)
    frames = int(os.environ.get("TRACEMALLOC_FRAMES", "1"))
    import signal
    import tracemalloc

    import gevent

    out = os.environ["TRACEMALLOC_OUT"]
    taken = [0]

    def on_usr2() -> None:  # in the hub: do the work in a greenlet
        path = f"{out}.{taken[0]}"
        taken[0] += 1
        gevent.spawn(_dump, path)

    if frames > 0:
        tracemalloc.start(frames)
    gevent.signal_handler(signal.SIGUSR2, on_usr2)
    worker.log.info("tracemalloc: %d frames; SIGUSR2 dumps to %s.<k>", frames, out)
