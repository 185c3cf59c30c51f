"""NPU_COMPAT_REPORT's writer: the cost of one line, and how many lines a serving process writes.

    python scripts/bench_report.py [SITES] [SECONDS]

* one write: ``write_report`` of a record with SITES compile sites (default 60),
  200 times, median and 90th percentile (build the record, open, flock, append);
* one change: ``changed()``, what a compile site's first call costs the caller;
* a serving process: SITES changes at start-up (sites compiled, then first
  calls, a few fallbacks), then SECONDS (default 20) of steady calls, which
  are no change: the lines written, at warm-up and in all.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ["NPU_COMPAT_DISABLE"] = "1"
from npu_compat import reportfile  # noqa: E402

SITES = int(sys.argv[1]) if len(sys.argv) > 1 else 60
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
entries = []


def state():
    return {"npu_compat": "bench", "route": "import", "patches": [{"name": f"r{i}", "state": "applied"} for i in range(8)],
            "compiles": list(entries)}


def entry(i):
    return {"site": f"sglang.srt.layers.mod{i}:helper_{i}", "target": f"sglang.srt.layers.mod{i}.helper_{i}",
            "where": f"sglang.srt.layers.mod{i}:<module>:{i}", "source": f"sglang/srt/layers/mod{i}.py:{i}",
            "backend": "inductor", "eager": False, "eager_by": None, "why": None, "kept": None,
            "when": "at definition", "called": False, "fell_back": None}


with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "npu.jsonl")
    os.environ[reportfile.VAR] = path
    entries[:] = [entry(i) for i in range(SITES)]
    reportfile._state_fn = state
    times = []
    for _ in range(200):
        t = time.perf_counter()
        reportfile.write_report(path)
        times.append(time.perf_counter() - t)
    times.sort()
    size = os.path.getsize(path) / 200
    print(f"one write ({SITES} sites, {size / 1024:.1f} KiB a line): median {statistics.median(times) * 1e6:.0f} us, "
          f"p90 {times[179] * 1e6:.0f} us")
    os.unlink(path)
    entries.clear()
    reportfile._state_fn = None
    assert reportfile.register_report(state)
    t = time.perf_counter()
    for i in range(SITES):  # start-up: each site compiled, then run once; a few fall back
        entries.append(entry(i))
        reportfile.changed()
        time.sleep(0.01)
    for i in range(SITES):
        entries[i] = dict(entries[i], called=True)
        reportfile.changed()
        if i % 20 == 0:
            entries[i] = dict(entries[i], eager=True, eager_by="fallback", fell_back={"stage": "first run"})
            reportfile.changed()
        time.sleep(0.002)
    calls = []
    for _ in range(10000):
        c = time.perf_counter()
        reportfile.changed()  # not on the call path at all after a first call; this is its ceiling
        calls.append(time.perf_counter() - c)
    reportfile._w.dirty = False
    time.sleep(1.5)
    warm = sum(1 for _ in open(path))
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:  # steady serving: calls of compiled sites change nothing
        time.sleep(0.05)
    steady = sum(1 for _ in open(path))
    reportfile._w.closed = True  # no exit line into the deleted directory
    print(f"changed(): median {statistics.median(calls) * 1e9:.0f} ns")
    print(f"serving: {warm} lines over the warm-up ({2 * SITES + SITES // 20 + 1} changes, "
          f"{time.perf_counter() - t - SECONDS:.1f} s), {steady - warm} more in {SECONDS:g} s of steady serving, "
          f"writer thread alive after: {reportfile._w.thread is not None}")
