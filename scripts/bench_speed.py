#!/usr/bin/env python3
"""What NPU_COMPAT_SPEED costs per call, and what a pick gives, measured side by side.

    python scripts/bench_speed.py [--rounds N] [--json PATH]

In one process with NPU forced (NPU_COMPAT_DEVICE=npu; CPU tensors,
inductor), a small gather (three index ops, slower compiled on a CPU) is
compiled five ways from the same source:

  torch       torch's own compiled function (not sglang's: untouched)
  fallback    sglang's, with the fallback (NPU_COMPAT_SPEED off)
  measuring   sglang's, with a meter held in its measuring phase
              (alternating compiled and eager calls, every call timed)
  picked      sglang's, after ``pick`` chose eager
  eager       the plain function

Blocks of 100 calls, the order rotated every round; medians per call, and
the medians of the paired ratios.  The overhead of a timed call is the
measuring site's time minus the mean of torch's compiled and the eager
time (it alternates between them).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import json, statistics, sys, time, types
import torch
import npu_compat, sglang
from npu_compat import core, speed
src = "def gather(i, p, t, o):\\n    return p[i], t[i], o[i]\\n"
def site(name):
    mod = types.ModuleType("sglang.srt.bench_" + name)
    sys.modules[mod.__name__] = mod
    exec(src, mod.__dict__)
    return mod.gather
ns = {"__name__": "plain"}; exec(src, ns)
eager = ns["gather"]
g = torch.Generator().manual_seed(0)
args = (torch.randint(0, 4096, (64,), generator=g), torch.rand(4096, 8, generator=g),
        torch.randint(0, 9, (4096, 8), generator=g), torch.randint(0, 9, (4096,), generator=g))
fns = {"torch": torch.compile(eager, dynamic=True)}
speed.MODE[0] = None
fns["fallback"] = torch.compile(site("fallback"), dynamic=True)
speed.MODE[0] = "check"
keep, speed.MIN_SAMPLES = speed.MIN_SAMPLES, 10 ** 9   # never decides: measures every call
fns["measuring"] = torch.compile(site("measuring"), dynamic=True)
speed.MIN_SAMPLES = keep
speed.MODE[0] = "pick"
fns["picked"] = torch.compile(site("picked"), dynamic=True)
fns["eager"] = eager
for name, f in fns.items():
    for _ in range(3):
        f(*args)
picked = None
for _ in range(2000):
    fns["picked"](*args)
    e = [c for c in core.compiles() if c["site"].startswith("sglang.srt.bench_picked")][0]
    if e["speed"]:
        picked = e["speed"]
        break
names = list(fns)
res = {n: [] for n in names}
for r in range(ROUNDS):
    order = names[r % len(names):] + names[:r % len(names)]
    for n in order:
        f = fns[n]
        t = time.perf_counter_ns()
        for _ in range(100):
            f(*args)
        res[n].append((time.perf_counter_ns() - t) / 100 / 1e3)
print("SPEED:" + json.dumps({"samples": res, "picked": picked}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="npu-compat-speed-")
    os.makedirs(os.path.join(tmp, "sglang"))
    open(os.path.join(tmp, "sglang", "__init__.py"), "w").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, tmp]), NPU_COMPAT_DEVICE="npu")
    out = subprocess.run([sys.executable, "-c", CHILD.replace("ROUNDS", str(a.rounds))], env=env, cwd="/",
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("SPEED:")), None)
    if line is None:
        raise SystemExit(f"bench_speed: the child failed (rc={out.returncode}): {out.stderr[-2000:]}")
    r = json.loads(line[len("SPEED:") :])
    s = r["samples"]
    med = {n: statistics.median(v) for n, v in s.items()}

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(s[a], s[b]))

    per_timed = [m - (t + e) / 2 for m, t, e in zip(s["measuring"], s["torch"], s["eager"])]
    res = {
        "median_us": med,
        "fallback / torch": ratio("fallback", "torch"),
        "picked / eager": ratio("picked", "eager"),
        "picked / torch": ratio("picked", "torch"),
        "overhead per timed call (us, median of rounds)": statistics.median(per_timed),
        "picked record": r["picked"],
        "rounds": a.rounds,
    }
    for k, v in res.items():
        print(f"{k:<50} {json.dumps(v)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
