#!/usr/bin/env python3
"""What the guards cost, on the real sglang, measured side by side (part of scripts/bench.py).

    python scripts/bench_guards.py [--quick] [--sglang-python PY] [--version 0.5.23|0.5.13]

  late     the sglang plugin's activation in a process that has imported
           sglang's scheduler (and the rotary/llama4/minimax modules), on a
           simulated NPU: the whole plugin.load() and the walk over the
           loaded modules inside it, one fresh process per sample.
           Goal: <= 10 ms.
  import   `import sglang.srt.managers.scheduler` (whole process) with
           npu_compat active vs NPU_COMPAT_DISABLE=1, interleaved; on the
           simulated NPU and off NPU.  Goal: <= 1.02 on NPU; off NPU the
           work done is shown to be none (no walk, torch.compile untouched).
  per call a compiled site with the fallback in place vs the same function
           compiled by torch without it, in one process on the simulated
           NPU (dynamo tracing), blocks of calls interleaved (ABBA), with
           two backends: the stub torchair backend that runs the graph as
           it is (the cheapest compiled call, so the worst ratio) and
           inductor (C++ on this CPU; about 40 s of compiling).
           Goal: <= 1.02 on CPU with inductor (<= 1.01 at H200-sized calls).

PY is an interpreter with the real sglang (scripts/make_sglang_venv.sh;
default: $NPU_COMPAT_SGLANG_PYTHON).  0.5.23 is taken from PY's venv's
sglang-0.5.23 tree.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")

SIMULATE = "from support import fake_npu, npu_stubs; fake_npu.install(); npu_stubs.install()\n"
LOAD = """
import importlib, sys
import sglang.srt.managers.scheduler
for name in ("sglang.srt.layers.rotary_embedding.rope_variant", "sglang.srt.models.llama4",
             "sglang.srt.models.minimax_vl_common"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
"""
LATE = SIMULATE + LOAD + """
import time
t = time.perf_counter()
from npu_compat import plugin, core
plugin.load()
total = (time.perf_counter() - t) * 1e3
mods = [m for n, m in sys.modules.items() if n.startswith("sglang") and m is not None]
attrs = sum(len(m.__dict__) for m in mods)
import json
print("LATE:" + json.dumps({"total_ms": total, "walk_ms": core._state.walk_ms, "modules": len(mods), "attributes": attrs,
      "applied": sorted(s.name for s in core.status() if s.state == "applied")}))
"""
OFF = LOAD + """
import torch
tc = torch.compile
from npu_compat import plugin, core
plugin.load()
import json
print("OFF:" + json.dumps({"walk_ms": core._state.walk_ms, "torch_compile_untouched": torch.compile is tc,
      "states": sorted(set(s.state for s in core.status()))}))
"""


PER_CALL = SIMULATE + """
import torch, time, statistics, json, types, sys
torch.accelerator.is_available = lambda: False
import npu_compat, torch._dynamo, torchair
import sglang  # arms npu_compat (it starts watching when sglang loads)
backend = torchair.get_npu_backend() if "BACKEND" == "stub" else "inductor"
from npu_compat import fallback
src = "import torch\\ndef gather(i, p, t, o):\\n    return p[i], t[i], o[i]\\n"
mod = types.ModuleType("sglang.srt.managers.bench_site"); sys.modules[mod.__name__] = mod
exec(src, mod.__dict__)
ns = {"__name__": "bench_plain"}; exec(src, ns)
with_fb = torch.compile(mod.gather, dynamic=True, backend=backend)          # sglang's: the fallback wraps it
plain = torch.compile(ns["gather"], dynamic=True, backend=backend)  # not sglang's: torch's own, untouched
assert fallback.is_armed(with_fb) and not fallback.is_armed(plain)  # the fallback is in torch's own wrapper
i = torch.randint(0, 4096, (64,)); p = torch.rand(4096, 8); t = torch.randint(0, 9, (4096, 8)); o = torch.randint(0, 9, (4096,))
for f in (with_fb, plain):
    for _ in range(200): f(i, p, t, o)
res = {"fallback": [], "torch": []}
for block in range(ROUNDS):  # short blocks, alternating order: drift and load hit both alike
    for name, f in (("fallback", with_fb), ("torch", plain)) if block % 2 == 0 else (("torch", plain), ("fallback", with_fb)):
        t0 = time.perf_counter_ns()
        for _ in range(100): f(i, p, t, o)
        res[name].append((time.perf_counter_ns() - t0) / 100 / 1e3)
print("CALL:" + json.dumps(res))
"""


def _env(version, py, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT") and k != "PYTHONPATH"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    venv = os.path.dirname(os.path.dirname(os.path.abspath(py)))
    path = [ROOT, TESTS] if version == "0.5.13" else [ROOT, os.path.join(venv, "sglang-0.5.23"), TESTS]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def _child(py, code, env, tag):
    out = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, cwd="/", timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith(tag + ":"):
            return json.loads(line[len(tag) + 1 :])
    raise RuntimeError(f"child failed (rc={out.returncode}): {out.stderr[-2000:]}")


def _wall(py, code, env):
    t = time.perf_counter_ns()
    subprocess.run([py, "-c", code], env=env, check=True, capture_output=True, cwd="/", timeout=600)
    return (time.perf_counter_ns() - t) / 1e6


def bench_guards(quick=False, py=None, version="0.5.23", only=None):
    py = py or os.environ.get("NPU_COMPAT_SGLANG_PYTHON")
    py = os.path.abspath(py) if py else py
    if not py:
        raise SystemExit("bench_guards: no sglang interpreter (--sglang-python or NPU_COMPAT_SGLANG_PYTHON)")
    runs = 3 if quick else 7
    out = {}
    if only == "call":
        return _per_call(out, py, version, quick)
    late = [_child(py, LATE, _env(version, py), "LATE") for _ in range(runs)]
    out[f"late activation on NPU, sglang {version} scheduler loaded (plugin.load total)"] = {
        "median_ms": statistics.median(x["total_ms"] for x in late),
        "min_ms": min(x["total_ms"] for x in late),
        "max_ms": max(x["total_ms"] for x in late),
        "n": runs,
    }
    out[f"  of which the walk over {late[0]['modules']} modules, {late[0]['attributes']} module attributes"] = {
        "median_ms": statistics.median(x["walk_ms"] for x in late),
        "min_ms": min(x["walk_ms"] for x in late),
        "max_ms": max(x["walk_ms"] for x in late),
        "n": runs,
    }
    out["  guards applied"] = {"names": late[0]["applied"]}
    imp = "import npu_compat\nimport sglang.srt.managers.scheduler\n"
    cases = [
        ("NPU, active", SIMULATE + imp, _env(version, py)),
        ("NPU, NPU_COMPAT_DISABLE=1", SIMULATE + imp, _env(version, py, NPU_COMPAT_DISABLE="1")),
        ("off NPU, active", imp, _env(version, py)),
        ("off NPU, NPU_COMPAT_DISABLE=1", imp, _env(version, py, NPU_COMPAT_DISABLE="1")),
    ]
    _wall(py, imp, _env(version, py))  # warm the file cache
    samples = {name: [] for name, _, _ in cases}
    for i in range(runs):
        for name, code, env in cases if i % 2 == 0 else cases[::-1]:
            samples[name].append(_wall(py, code, env))
    for name, s in samples.items():
        out[f"import scheduler: {name}"] = {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s), "n": runs}
    for where in ("NPU", "off NPU"):
        a = out[f"import scheduler: {where}, active"]["median_ms"]
        b = out[f"import scheduler: {where}, NPU_COMPAT_DISABLE=1"]["median_ms"]
        out[f"import scheduler: {where}, ratio active/disabled"] = {"ratio": a / b}
    out["off NPU: work done by the plugin"] = _child(py, OFF, _env(version, py), "OFF")
    return _per_call(out, py, version, quick)


def _per_call(out, py, version, quick, backends=("stub", "inductor")):
    for backend in ("stub",) if quick else backends:
        code = PER_CALL.replace("ROUNDS", str(100 if quick else 400)).replace("BACKEND", backend)
        calls = _child(py, code, _env(version, py), "CALL")
        for name, s in calls.items():
            out[f"per call, {backend} backend, compiled site: {name}"] = {
                "median_us": statistics.median(s), "min_us": min(s), "max_us": max(s), "n_blocks": len(s)}
        ratios = sorted(a / b for a, b in zip(calls["fallback"], calls["torch"]))
        q = len(ratios) // 4
        out[f"per call, {backend} backend, ratio with fallback / torch's own (median of paired blocks)"] = {
            "ratio": statistics.median(ratios), "q1": ratios[q], "q3": ratios[-q - 1], "min": ratios[0],
            "max": ratios[-1]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sglang-python", default=None)
    p.add_argument("--version", default="0.5.23", choices=("0.5.13", "0.5.23"))
    p.add_argument("--json", default=None)
    p.add_argument("--only", choices=("call",), default=None, help="only the per-call comparison")
    args = p.parse_args(argv)
    res = bench_guards(args.quick, args.sglang_python, args.version, args.only)
    for k, v in res.items():
        print(f"{k:<80} {json.dumps(v)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
