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


def _env(version, py, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT") and k != "PYTHONPATH"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    venv = os.path.dirname(os.path.dirname(os.path.abspath(py)))
    path = [TESTS] if version == "0.5.13" else [os.path.join(venv, "sglang-0.5.23"), TESTS]
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


def bench_guards(quick=False, py=None, version="0.5.23"):
    py = py or os.environ.get("NPU_COMPAT_SGLANG_PYTHON")
    if not py:
        raise SystemExit("bench_guards: no sglang interpreter (--sglang-python or NPU_COMPAT_SGLANG_PYTHON)")
    runs = 3 if quick else 7
    out = {}
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
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sglang-python", default=None)
    p.add_argument("--version", default="0.5.23", choices=("0.5.13", "0.5.23"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    res = bench_guards(args.quick, args.sglang_python, args.version)
    for k, v in res.items():
        print(f"{k:<80} {json.dumps(v)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
