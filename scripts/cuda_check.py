#!/usr/bin/env python3
"""On an NVIDIA GPU: npu_compat leaves CUDA alone, and its fallback works with a real toolchain.

    python scripts/cuda_check.py [--json PATH] [--calls N] [--device cuda|cpu] [--only off|cost|toolchain]

Off NPU (the machine as it is), on a pre-fix overlap_utils fixture
(tests/fixtures) imported with npu_compat active:
  1. both helpers stay upstream's torch.compile'd objects; every record is
     not-needed, absent or opt-in;
  2. npu_compat's own implementations give bit-identical results on device
     tensors of serving sizes;
  3. per call, compiled vs eager for both helpers at batch 1 to 1024, a
     synchronisation after each call, interleaved blocks; medians.
NPU forced (NPU_COMPAT_DEVICE=npu; tensors stay on the device), each in a
fresh process:
  4. cost: an sglang-shaped gather site compiled with inductor through
     npu_compat's hook (the fallback in place) vs the same function compiled
     by torch alone, per call, ABBA blocks, medians and quartiles of the
     paired ratios (goal <= 1.01 at these sizes);
  5. toolchain: a real compiler failure (on CUDA a ``ptxas`` that answers
     ``--version`` like the bundled one and fails to assemble; on CPU
     ``CXX=/bin/false``), fresh caches: the first call is served eagerly,
     bit-identical to the eager function, with one WARNING, the audit says
     fell back at compile; with NPU_COMPAT_FALLBACK=0 the same call raises.
``--device cpu`` runs 4 and 5 on this CPU (a dry run of the script).
Exits 1 if a check fails.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SITE = """
import sys, types
import torch
def make_site():
    src = "def gather(i, p, t, o):\\n    return p[i], t[i], o[i] + 1\\n"
    mod = types.ModuleType("sglang.srt.managers.check_site")
    sys.modules[mod.__name__] = mod
    exec(src, mod.__dict__)
    ns = {"__name__": "plain_site"}
    exec(src, ns)
    return mod.gather, ns["gather"]
def inputs(dev, batch=64, pool=4096):
    g = torch.Generator(device=dev).manual_seed(0)
    return (torch.randint(0, pool, (batch,), device=dev, generator=g), torch.rand(pool, 8, device=dev, generator=g),
            torch.randint(0, 9, (pool, 8), device=dev, generator=g), torch.randint(0, 9, (pool,), device=dev, generator=g))
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
"""

COST = SITE + """
import json, statistics, time
import npu_compat, sglang  # sglang (a stub package here) arms npu_compat
from npu_compat import fallback
dev = torch.device(DEVICE)
ours, theirs = make_site()
with_fb = torch.compile(ours, dynamic=True)      # sglang's: compiled through npu_compat's hook
plain = torch.compile(theirs, dynamic=True)      # not sglang's: torch's own
assert fallback.is_armed(with_fb) and not fallback.is_armed(plain)
args = inputs(dev)
a, b = with_fb(*args), plain(*args)
same = all(torch.equal(x, y) for x, y in zip(a, b))
for f in (with_fb, plain):
    for _ in range(50):
        f(*args)
sync(dev)
res = {"fallback": [], "torch": []}
for block in range(BLOCKS):
    order = (("fallback", with_fb), ("torch", plain))
    for name, f in order if block % 2 == 0 else order[::-1]:
        t = time.perf_counter_ns()
        for _ in range(PER):
            f(*args)
            sync(dev)
        res[name].append((time.perf_counter_ns() - t) / PER / 1e3)
print("COST:" + json.dumps({"samples": res, "identical": same}))
"""

TOOLCHAIN = SITE + """
import json
import npu_compat, sglang
from npu_compat import core
import torch._dynamo.utils as du
dev = torch.device(DEVICE)
ours, _ = make_site()
site = torch.compile(ours, dynamic=True)
args = inputs(dev)
want = ours(*args)
try:
    got = site(*args)
    first = {"identical": all(torch.equal(x, y) for x, y in zip(got, want))}
except Exception as exc:
    first = {"raised": type(exc).__name__, "message": str(exc).splitlines()[0][:200] if str(exc) else ""}
f0 = sum(du.counters["frames"].values())
try:
    second = {"identical": all(torch.equal(x, y) for x, y in zip(site(*args), want))}
except Exception as exc:
    second = {"raised": type(exc).__name__}
entry = [c for c in core.compiles() if c["site"].endswith(":gather")]
print("TOOL:" + json.dumps({"first": first, "second": second, "frames_after": sum(du.counters["frames"].values()) - f0,
                            "fell_back": entry[0]["fell_back"] if entry else None}))
"""


def _stub_sglang(tmp):
    pkg = os.path.join(tmp, "sglang")
    os.makedirs(pkg, exist_ok=True)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    return tmp


def _child(code, env, tag, timeout=900):
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd="/")
    for line in out.stdout.splitlines():
        if line.startswith(tag + ":"):
            return json.loads(line[len(tag) + 1 :]), out.stderr
    raise RuntimeError(f"child failed (rc={out.returncode}): {out.stderr[-3000:]}")


def _npu_env(tmp, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([ROOT, _stub_sglang(tmp)]), NPU_COMPAT_DEVICE="npu")
    env.update(extra)
    return env


def _broken_toolchain(tmp, device):
    """Environment for a compiler that fails for real: a bad ptxas on CUDA, a bad C++ compiler on CPU."""
    env = {
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor-cache"),
        "TRITON_CACHE_DIR": os.path.join(tmp, "triton-cache"),
    }
    if device == "cpu":
        env.update(CXX="/bin/false", CC="/bin/false")
        return env
    import triton.backends.nvidia as nv

    real = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    version = subprocess.run([real, "--version"], capture_output=True, text=True).stdout
    fake = os.path.join(tmp, "ptxas")
    with open(fake, "w") as f:  # triton ignores a ptxas whose --version fails: this one answers it
        f.write("#!/bin/sh\nif [ \"$1\" = --version ]; then cat <<'EOF'\n" + version + "EOF\nexit 0; fi\n"
                "echo 'ptxas fatal: simulated assembler failure' >&2\nexit 1\n")
    os.chmod(fake, 0o755)
    env["TRITON_PTXAS_PATH"] = fake
    return env


def check_cost(device, calls):
    tmp = tempfile.mkdtemp(prefix="npu-compat-cost-")
    per = 50
    code = COST.replace("DEVICE", repr(device)).replace("BLOCKS", str(max(4, calls // per))).replace("PER", str(per))
    r, _ = _child(code, _npu_env(tmp), "COST")
    s = r["samples"]
    ratios = sorted(a / b for a, b in zip(s["fallback"], s["torch"]))
    q = len(ratios) // 4
    out = {
        "fallback_us": statistics.median(s["fallback"]),
        "torch_us": statistics.median(s["torch"]),
        "ratio_median": statistics.median(ratios),
        "ratio_q1": ratios[q],
        "ratio_q3": ratios[-q - 1],
        "blocks": len(ratios),
        "identical": r["identical"],
    }
    print(f"cost: with fallback {out['fallback_us']:.1f} us, torch's own {out['torch_us']:.1f} us, "
          f"ratio {out['ratio_median']:.3f} [{out['ratio_q1']:.3f}, {out['ratio_q3']:.3f}]", flush=True)  # fmt: skip
    return out, r["identical"]


def check_toolchain(device):
    out = {}
    for label, extra in (("fallback", {}), ("fallback_off", {"NPU_COMPAT_FALLBACK": "0"})):
        tmp = tempfile.mkdtemp(prefix="npu-compat-tool-")
        env = _npu_env(tmp, **_broken_toolchain(tmp, device), **extra)
        r, err = _child(TOOLCHAIN.replace("DEVICE", repr(device)), env, "TOOL")
        r["warnings"] = [ln for ln in err.splitlines() if "failed on NPU" in ln]
        out[label] = r
        print(f"toolchain, {label}: {json.dumps(r)[:400]}", flush=True)
    fb, off = out["fallback"], out["fallback_off"]
    ok = (
        fb["first"] == {"identical": True}
        and fb["second"] == {"identical": True}
        and fb["frames_after"] == 0
        and (fb["fell_back"] or {}).get("stage") == "compile"
        and len(fb["warnings"]) == 1
        and "raised" in off["first"]
        and off["fell_back"] is None
    )
    return out, ok


def check_off_npu(calls):
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    from fixtures import build

    tree = build(tempfile.mkdtemp(), "prefix")
    sys.path.insert(0, tree)

    import npu_compat  # active, as in an image that enables it everywhere
    import torch
    import torch._dynamo.utils as du

    import sglang.srt.managers.overlap_utils as m
    from npu_compat.impl import overlap_utils as own

    assert torch.cuda.is_available(), "no CUDA device"
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "npu_compat_is_npu": npu_compat.is_npu(),
        "states": {s.name: (s.state, s.reason) for s in npu_compat.status()},
    }
    names = ("_assert_nonneg_and_invalidate", "_gather_spec_extras")
    untouched = {
        n: getattr(getattr(m, n), "_torchdynamo_orig_callable", None) is not None
        and getattr(m, n)._torchdynamo_orig_callable.__code__.co_filename == m.__file__
        for n in names
    }
    out["helpers_are_upstreams_compiled"] = untouched

    dev = torch.device("cuda")
    pool, topk, hidden = 4096, 4, 7168
    g = torch.Generator(device=dev).manual_seed(0)
    topk_p = torch.rand(pool, topk, device=dev, generator=g)
    topk_index = torch.randint(0, 150000, (pool, topk), device=dev, generator=g)
    tokens = torch.randint(0, 150000, (pool,), device=dev, generator=g)
    hid = torch.randn(pool, hidden, device=dev, generator=g).to(torch.bfloat16)

    identical, timings = {}, {}
    for batch in (1, 8, 64, 256, 1024):
        idx = torch.randint(0, pool, (batch,), device=dev, generator=g)
        for with_hidden in (True, False):
            h = hid if with_hidden else None
            a = m._gather_spec_extras(idx, topk_p, topk_index, tokens, h)
            b = own._gather_spec_extras(idx, topk_p, topk_index, tokens, h)
            identical[f"gather b{batch} hidden={with_hidden}"] = all(
                (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b)
            )
        buf_a, buf_b = tokens.clone(), tokens.clone()
        m._assert_nonneg_and_invalidate(buf_a[idx], buf_a, idx)
        own._assert_nonneg_and_invalidate(buf_b[idx], buf_b, idx)
        identical[f"assert b{batch}"] = torch.equal(buf_a, buf_b)

        cases = {
            f"_gather_spec_extras batch {batch}": (
                m._gather_spec_extras, own._gather_spec_extras, (idx, topk_p, topk_index, tokens, hid)),
            f"_assert_nonneg_and_invalidate batch {batch}": (
                m._assert_nonneg_and_invalidate, own._assert_nonneg_and_invalidate, (tokens[idx], tokens.clone(), idx)),
        }  # fmt: skip
        for name, (compiled, eager, call_args) in cases.items():
            samples = {"compiled": [], "eager": []}
            for fn in (compiled, eager):
                for _ in range(20):
                    fn(*call_args)
            torch.cuda.synchronize()
            blocks, per = 8, max(1, calls // 8)
            for blk in range(blocks):
                order = (("compiled", compiled), ("eager", eager))
                for label, fn in order if blk % 2 == 0 else order[::-1]:
                    for _ in range(per):
                        t = time.perf_counter_ns()
                        fn(*call_args)
                        torch.cuda.synchronize()
                        samples[label].append(time.perf_counter_ns() - t)
            c, e = statistics.median(samples["compiled"]) / 1e3, statistics.median(samples["eager"]) / 1e3
            timings[name] = {"compiled_us": c, "eager_us": e, "compiled_over_eager": c / e, "calls_each": blocks * per}
            print(f"{name:<42} compiled {c:8.1f} us  eager {e:8.1f} us  ratio {c / e:5.2f}", flush=True)

    out["bit_identical"] = identical
    out["timings"] = timings
    out["dynamo_frames"] = sum(du.counters["frames"].values())
    # Off NPU every record whose module exists is not-needed; the others are absent (their
    # module is not in this fixture tree) or opt-in.
    states_ok = all(s[0] in ("not-needed", "absent", "opt-in") for s in out["states"].values())
    out["ok"] = all(untouched.values()) and all(identical.values()) and states_ok
    print(json.dumps({k: out[k] for k in ("device", "torch", "helpers_are_upstreams_compiled", "dynamo_frames", "ok")}))
    print("bit-identical:", all(identical.values()), f"({len(identical)} comparisons)")
    return out, out["ok"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="cuda-check.json")
    p.add_argument("--calls", type=int, default=400, help="timed calls per variant")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--only", choices=("off", "cost", "toolchain"), default=None)
    args = p.parse_args()
    out, ok = {}, True
    if args.device == "cuda" and args.only in (None, "off"):
        out["off_npu"], good = check_off_npu(args.calls)
        ok &= good
    if args.only in (None, "cost"):
        out["npu_forced_cost"], good = check_cost(args.device, args.calls)
        ok &= good
    if args.only in (None, "toolchain"):
        out["npu_forced_toolchain"], good = check_toolchain(args.device)
        ok &= good
    out["ok"] = ok
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print("cuda_check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
