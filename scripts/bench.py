#!/usr/bin/env python3
"""npu-compat's costs, measured side by side, interleaved, in one run.

    python scripts/bench.py [--quick] [--json PATH] [--only startup,status,torch,patch,call,scan]
                            [--anchor NAME=CMD ...]

Figures (medians over runs after a warm-up; min and max beside them):

  startup  whole-process wall time of `python -c pass` (bare), `python -c
           "import npu_compat"`, `python -c pass` with the bootstrap on
           PYTHONPATH, `python -c "import wrapt"`, and any --anchor command;
           each as a ratio to bare.  Goal: npu_compat <= 1.15.
  status   whole-process wall time of `npu-compat status --no-import` and
           `npu-compat status` beside `python -c pass` and `python -c "import
           torch"` (torch from the development venv, on PYTHONPATH; no
           sglang there, so the full status imports no target); ratios to
           both.  Goal: status --no-import < 500 ms.
  torch    `import npu_compat, torch` with npu_compat active vs disabled
           (NPU_COMPAT_DISABLE=1), and the cost of npu_compat's finder,
           counted: calls during `import torch` x ns per call.  Goal: <= 1.01.
  instructions  instructions executed (valgrind callgrind) for the startup
           cases and for the torch import: deterministic where wall time is noisy.
  patch    time from the target module's end to the patch in place
           (npu_compat's post-import hook on a pre-fix overlap_utils).
           Goal: < 1 ms.
  call     per call: the installed helpers vs plain eager functions with the
           same body, 100k calls each (--quick: 500) on CPU tensors of serving
           sizes.  Goal: <= 1.02.
  scan     `npu-compat scan` of the sglang 0.5.23 tree, in process, median of
           5 (the tree: $NPU_COMPAT_SGLANG_TREE, else <venv of
           $NPU_COMPAT_SGLANG_PYTHON>/sglang-0.5.23/sglang, else
           .venv-sglang/sglang-0.5.23/sglang).  Goal: < 2 s.

A figure that cannot run here (scan without a tree, instructions without
valgrind) says why on stderr: named in --only it makes the exit status 1;
left out of the default set, it is skipped (exit 0).

Every process is started from a directory outside the checkout (so that
`python -m npu_compat` finds the copy under test, not the source tree).

Timing uses time.perf_counter_ns only; whole-process figures use subprocess.
Shared machines are noisy: read the ratios, and rerun before trusting a
single figure.
"""

import argparse
import json
import shlex
import shutil
import os
import statistics
import subprocess
import sys
import tempfile
import time

class CannotRun(Exception):
    """A figure that cannot be measured here; the message says why."""


HERE = os.path.dirname(os.path.abspath(__file__))
OUTSIDE = tempfile.mkdtemp(prefix="npu-compat-bench-cwd-")  # every child starts here, not in the checkout
ROOT = os.path.dirname(HERE)
PY = sys.executable


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT") and k not in ("PYTHONPATH",)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with .pyc files, as an installed package has
    env.update(extra)
    return env


def _stats(samples_ns):
    s = sorted(samples_ns)
    return {"median_ms": statistics.median(s) / 1e6, "min_ms": s[0] / 1e6, "max_ms": s[-1] / 1e6, "n": len(s)}


def _time_cmd(cmd, env):
    """(wall ns, CPU ns) of one run of cmd: CPU is the child's user+system time,
    which other load on the machine disturbs less than wall time."""
    t = time.perf_counter_ns()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=OUTSIDE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter_ns() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, int((usage.ru_utime + usage.ru_stime) * 1e9)


def interleaved(cases, runs, warmup=3):
    """Run each (name, cmd, env) once per round, rounds interleaved; return stats per name."""
    for _ in range(warmup):
        for _, cmd, env in cases:
            _time_cmd(cmd, env)
    wall = {name: [] for name, _, _ in cases}
    cpu = {name: [] for name, _, _ in cases}
    for i in range(runs):
        # Alternate the order each round so no case always runs first.
        for name, cmd, env in cases if i % 2 == 0 else cases[::-1]:
            w, c = _time_cmd(cmd, env)
            wall[name].append(w)
            cpu[name].append(c)
    out = {}
    for name in wall:
        out[name] = _stats(wall[name])
        out[name]["cpu_median_ms"] = statistics.median(cpu[name]) / 1e6
    return out


def _with_ratios(stats, base):
    b, bc = stats[base]["median_ms"], stats[base]["cpu_median_ms"]
    for s in stats.values():
        s["ratio"] = s["median_ms"] / b
        s["cpu_ratio"] = s["cpu_median_ms"] / bc
    return stats


def clean_venv():
    """A throwaway venv holding only npu_compat and wrapt, installed as a wheel would be.

    The development venv's editable install adds a .pth finder that imports
    pathlib and re at every start-up (about 8 ms here); measuring there
    would flatter every ratio.
    """
    import sysconfig

    import wrapt

    d = tempfile.mkdtemp(prefix="npu-compat-bench-")
    subprocess.run([PY, "-m", "venv", "--without-pip", d], check=True)
    py = os.path.join(d, "bin", "python")
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(ROOT, "npu_compat"), os.path.join(site, "npu_compat"), ignore=skip)
    shutil.copytree(os.path.dirname(wrapt.__file__), os.path.join(site, "wrapt"), ignore=skip)
    subprocess.run([py, "-m", "compileall", "-q", site], check=True, stdout=subprocess.DEVNULL)
    dev_site = sysconfig.get_paths()["purelib"]  # torch, for the import-tax figure (no .pth processed)
    return py, os.path.join(site, "npu_compat", "bootstrap"), dev_site


def bench_startup(quick, anchors, venv):
    py, boot_dir, _ = venv
    boot = _env(PYTHONPATH=boot_dir)
    cases = [
        ("bare: python -c pass", [py, "-c", "pass"], _env()),
        ("python -c 'import npu_compat'", [py, "-c", "import npu_compat"], _env()),
        ("python -c pass, bootstrap on PYTHONPATH", [py, "-c", "pass"], boot),
        ("python -c 'import npu_compat', NPU_COMPAT_DISABLE=1", [py, "-c", "import npu_compat"], _env(NPU_COMPAT_DISABLE="1")),
        ("anchor: python -c 'import wrapt' (wrapt %s)" % _wrapt_version(), [py, "-c", "import wrapt"], _env()),
    ]
    for spec in anchors:
        name, _, cmd = spec.partition("=")
        cases.append((f"anchor: {name}", shlex.split(cmd), _env()))
    return _with_ratios(interleaved(cases, 3 if quick else 60, warmup=1 if quick else 3), "bare: python -c pass")


def bench_status(quick, venv):
    py, _, dev_site = venv
    env = _env(PYTHONPATH=dev_site)
    cases = [
        ("bare: python -c pass", [py, "-c", "pass"], env),
        ("python -c 'import torch'", [py, "-c", "import torch"], env),
        ("npu-compat status --no-import", [py, "-m", "npu_compat", "status", "--no-import"], env),
        ("npu-compat status", [py, "-m", "npu_compat", "status"], env),
    ]
    stats = _with_ratios(interleaved(cases, 1 if quick else 30, warmup=0 if quick else 2), cases[0][0])
    torch_ms = stats[cases[1][0]]["median_ms"]
    for s in stats.values():
        s["ratio_to_torch"] = s["median_ms"] / torch_ms
    return stats


COUNT_FINDER_CALLS = """
import sys, time
import npu_compat
calls = [0]
real = npu_compat._sentinel.find_spec
def counting(name, path=None, target=None):
    calls[0] += 1
    return real(name, path, target)
npu_compat._sentinel.find_spec = counting
import torch
# ns per call of the real finder, for a name it does not watch
n = 200000
t = time.perf_counter_ns()
for _ in range(n):
    real("some.module.name")
per_call = (time.perf_counter_ns() - t) / n
print(calls[0], per_call)
"""


def _wrapt_version():
    import wrapt

    return getattr(wrapt, "__version__", "?")


def bench_torch(quick, venv):
    py, _, dev_site = venv
    cases = [
        ("import npu_compat, torch (active)", [py, "-c", "import npu_compat, torch"], _env(PYTHONPATH=dev_site)),
        ("import npu_compat, torch (NPU_COMPAT_DISABLE=1)", [py, "-c", "import npu_compat, torch"],
         _env(PYTHONPATH=dev_site, NPU_COMPAT_DISABLE="1")),
        ("import torch (no npu_compat)", [py, "-c", "import torch"], _env(PYTHONPATH=dev_site)),
    ]  # fmt: skip
    stats = _with_ratios(interleaved(cases, 1 if quick else 60, warmup=0 if quick else 2), cases[1][0])
    out = subprocess.run([py, "-c", COUNT_FINDER_CALLS], env=_env(PYTHONPATH=dev_site), capture_output=True, text=True, check=True)
    calls, per_call_ns = out.stdout.split()
    base_ms = stats[cases[1][0]]["median_ms"]
    finder_ms = int(calls) * float(per_call_ns) / 1e6
    stats["finder calls during import torch"] = {
        "calls": int(calls),
        "ns_per_call": float(per_call_ns),
        "total_ms": finder_ms,
        "ratio": (base_ms + finder_ms) / base_ms,
    }
    return stats


PATCH_COST = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import npu_compat
from npu_compat import core
import importlib
real = core._on_import
spent = [0]
def timed(module, gen=None):
    t = time.perf_counter_ns()
    real(module, gen)
    spent[0] += time.perf_counter_ns() - t
core._on_import = timed
m = importlib.import_module("sglang.srt.managers.overlap_utils")
assert [s.state for s in npu_compat.status() if s.name.startswith("overlap-")] == ["applied", "applied"], npu_compat.status()
times = [spent[0]]
for _ in range(int(sys.argv[2])):  # re-apply on the imported module: deactivate, activate
    npu_compat.deactivate()
    spent[0] = 0
    npu_compat.activate()
    times.append(spent[0])  # all hook calls of this activation (a repeated call returns at once)
print(json.dumps(times))
"""


def bench_patch(quick):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from fixtures import build

    firsts, again = [], []
    with tempfile.TemporaryDirectory() as d:
        build(d, "prefix")
        for i in range(2 if quick else 20):  # a fresh process each: the first application is the real one
            out = subprocess.run(
                [PY, "-c", PATCH_COST, d, "0" if i else ("20" if quick else "200")],
                env=_env(NPU_COMPAT_DEVICE="npu"),
                capture_output=True,
                text=True,
                check=True,
            )
            times = json.loads(out.stdout)
            firsts.append(times[0])
            again.extend(times[1:])
    return {
        "first application, at the target's import (one per process)": _stats(firsts[1:] or firsts),
        "re-application on an imported module": _stats(again),
    }


def _instructions(cmd, env):
    env = dict(env, PYTHONHASHSEED="0")  # same hashing, same instruction count, run after run
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].replace(",", ""))
    raise RuntimeError("callgrind printed no instruction count")


def bench_instructions(quick, venv):
    """Instructions executed (callgrind): deterministic where wall time is noisy."""
    py, boot_dir, dev_site = venv
    cases = [
        ("bare: python -c pass", [py, "-c", "pass"], _env()),
        ("python -c 'import npu_compat'", [py, "-c", "import npu_compat"], _env()),
        ("python -c pass, bootstrap on PYTHONPATH", [py, "-c", "pass"], _env(PYTHONPATH=boot_dir)),
        ("anchor: python -c 'import wrapt' (wrapt %s)" % _wrapt_version(), [py, "-c", "import wrapt"], _env()),
    ]
    if not quick:  # about a minute each under valgrind
        cases += [
            ("import npu_compat, torch (NPU_COMPAT_DISABLE=1)", [py, "-c", "import npu_compat, torch"],
             _env(PYTHONPATH=dev_site, NPU_COMPAT_DISABLE="1")),
            ("import npu_compat, torch (active)", [py, "-c", "import npu_compat, torch"], _env(PYTHONPATH=dev_site)),
        ]  # fmt: skip
    out = {name: {"instructions": _instructions(cmd, env)} for name, cmd, env in cases}
    bare = out["bare: python -c pass"]["instructions"]
    for name, v in out.items():
        base = out.get("import npu_compat, torch (NPU_COMPAT_DISABLE=1)", {}).get("instructions") if "torch" in name else bare
        v["ratio"] = v["instructions"] / base
    return out


def bench_call(quick):
    import torch

    from npu_compat.impl import overlap_utils as installed

    # What fixed upstream runs on NPU: plain functions with the same body.
    def plain_assert(values, buf, indices):
        torch._assert_async(torch.all(values >= 0))
        buf[indices] = -1

    def plain_gather(indices, topk_p_buf, topk_index_buf, output_tokens_buf, hidden_states_buf):
        hidden = None if hidden_states_buf is None else hidden_states_buf[indices]
        return topk_p_buf[indices], topk_index_buf[indices], output_tokens_buf[indices], hidden

    torch.set_num_threads(1)
    pool, topk, hidden = 4096, 4, 7168
    g = torch.Generator().manual_seed(0)
    bufs = (
        torch.rand(pool, topk, generator=g),
        torch.randint(0, 150000, (pool, topk), generator=g),
        torch.randint(0, 150000, (pool,), generator=g),
        torch.randn(pool, hidden, generator=g).to(torch.bfloat16),
    )
    calls = 500 if quick else 100_000
    blocks = 10
    per_block = calls // blocks
    results = {}
    for batch in (1, 8, 64, 256):
        idx = torch.randint(0, pool, (batch,), generator=g)
        values = bufs[2][idx].clamp(min=0)
        scratch = torch.zeros(pool, dtype=torch.int64)
        pairs = {
            f"_gather_spec_extras batch {batch} (hidden bf16)": (
                installed._gather_spec_extras, plain_gather, (idx,) + bufs),
            f"_gather_spec_extras batch {batch} (no hidden)": (
                installed._gather_spec_extras, plain_gather, (idx,) + bufs[:3] + (None,)),
            f"_assert_nonneg_and_invalidate batch {batch}": (
                installed._assert_nonneg_and_invalidate, plain_assert, (values, scratch, idx)),
        }  # fmt: skip
        for name, (a, b, args) in pairs.items():
            for fn in (a, b):  # warm-up
                for _ in range(min(200, per_block)):
                    fn(*args)
            samples = {"installed": [], "plain": []}
            for blk in range(blocks):  # A/B interleaved, order alternating
                order = (("installed", a), ("plain", b)) if blk % 2 == 0 else (("plain", b), ("installed", a))
                for label, fn in order:
                    t = time.perf_counter_ns()
                    for _ in range(per_block):
                        fn(*args)
                    samples[label].append((time.perf_counter_ns() - t) / per_block)
            med_a, med_b = statistics.median(samples["installed"]), statistics.median(samples["plain"])
            results[name] = {
                "installed_us": med_a / 1e3,
                "plain_us": med_b / 1e3,
                "ratio": med_a / med_b,
                "installed_min_us": min(samples["installed"]) / 1e3,
                "plain_min_us": min(samples["plain"]) / 1e3,
                "calls_each": per_block * blocks,
            }
    return results


def bench_scan(quick):
    """Median of 5 scans of sglang 0.5.23, with the files read, parsed and skipped."""
    tree = os.environ.get("NPU_COMPAT_SGLANG_TREE")
    if not tree and os.environ.get("NPU_COMPAT_SGLANG_PYTHON"):
        venv = os.path.dirname(os.path.dirname(os.environ["NPU_COMPAT_SGLANG_PYTHON"]))
        tree = os.path.join(venv, "sglang-0.5.23", "sglang")
    tree = tree or os.path.join(ROOT, ".venv-sglang", "sglang-0.5.23", "sglang")
    if not os.path.isdir(tree):
        raise CannotRun(
            f"no sglang 0.5.23 tree at {tree}: set NPU_COMPAT_SGLANG_TREE to one "
            "(pip install --no-deps --target DIR sglang==0.5.23; then DIR/sglang)"
        )
    sys.path.insert(0, ROOT)
    from npu_compat.scan import scan

    samples, report = [], None
    for _ in range(2 if quick else 5):
        t = time.perf_counter_ns()
        report = scan([tree], patches=())
        samples.append(time.perf_counter_ns() - t)
    s = report.summary()
    name = (f"scan sglang 0.5.23: {s['files_read']} files read, {s['files_parsed']} parsed, "
            f"{s['files_skipped']} skipped; {s['sites']} sites")
    return {name: dict(_stats(samples), files=s, counts=report.counts())}


def _print_table(title, rows):
    print(f"\n== {title}")
    for name, s in rows.items():
        if "median_ms" in s:
            extra = f"  ratio {s['ratio']:.3f} (CPU time {s['cpu_ratio']:.3f})" if "ratio" in s else ""
            if "ratio_to_torch" in s:
                extra += f"; to import torch {s['ratio_to_torch']:.3f}"
            print(f"  {name:<58} median {s['median_ms']:9.3f} ms  [{s['min_ms']:.3f} .. {s['max_ms']:.3f}]  n={s['n']}{extra}")
        elif "installed_us" in s:
            print(f"  {name:<52} installed {s['installed_us']:9.2f} us  plain {s['plain_us']:9.2f} us  ratio {s['ratio']:.3f}")
        elif "instructions" in s:
            print(f"  {name:<58} {s['instructions']:>14,} instructions  ratio {s['ratio']:.4f}")
        elif "calls" in s:
            print(f"  {name:<58} {s['calls']} calls x {s['ns_per_call']:.0f} ns = {s['total_ms']:.3f} ms  ratio {s['ratio']:.4f}")
        else:
            print(f"  {name:<58} {s['ms']:.3f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few runs (under a minute): checks the script works")
    p.add_argument("--json", default="bench-results.json", help="where to write the figures (default: %(default)s)")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated subset (instructions needs valgrind; skipped without it)",
    )
    p.add_argument("--anchor", action="append", default=[], metavar="NAME=CMD", help="another command to time at startup")
    args = p.parse_args(argv)
    explicit = args.only is not None
    only = args.only if explicit else "startup,status,torch,instructions,patch,call,scan"
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    failed = []
    if "instructions" in wanted and not shutil.which("valgrind"):
        print("bench.py: instructions: cannot run: valgrind not found", file=sys.stderr)
        wanted.remove("instructions")
        if explicit:
            failed.append("instructions")
    venv = clean_venv() if {"startup", "status", "torch", "instructions"} & set(wanted) else None
    runners = {
        "startup": lambda: bench_startup(args.quick, args.anchor, venv),
        "status": lambda: bench_status(args.quick, venv),
        "torch": lambda: bench_torch(args.quick, venv),
        "instructions": lambda: bench_instructions(args.quick, venv),
        "patch": lambda: bench_patch(args.quick),
        "call": lambda: bench_call(args.quick),
        "scan": lambda: bench_scan(args.quick),
    }
    unknown = [w for w in wanted if w not in runners]
    if unknown:
        p.error(f"unknown figure(s): {', '.join(unknown)}")
    results = {
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count(), "quick": args.quick},
        "command": " ".join([os.path.relpath(sys.argv[0]) if sys.argv else "bench.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    t0 = time.perf_counter()
    for w in wanted:
        try:
            results[w] = runners[w]()
        except CannotRun as exc:
            print(f"bench.py: {w}: cannot run: {exc}" + ("" if explicit else " (skipped)"), file=sys.stderr)
            results[w] = {"cannot run": str(exc)}
            if explicit:
                failed.append(w)
            continue
        _print_table(w, results[w])
    results["seconds"] = time.perf_counter() - t0
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json} ({results['seconds']:.0f} s)")
    if failed:
        print(f"bench.py: not measured: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
