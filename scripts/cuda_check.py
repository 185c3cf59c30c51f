#!/usr/bin/env python3
"""On an NVIDIA GPU: npu_compat leaves CUDA alone, and how compiled and eager helpers compare.

    python scripts/cuda_check.py [--json PATH] [--calls N]

Checks, on a pre-fix overlap_utils fixture (tests/fixtures) imported with
npu_compat active on a CUDA machine:
  1. both helpers stay upstream's torch.compile'd objects (state not-needed);
  2. npu_compat's own implementations give bit-identical results to them on
     CUDA tensors of serving sizes;
  3. per-call time of compiled vs eager for both helpers at batch 1, 8, 64,
     256, 1024, in a synchronous loop (torch.cuda.synchronize after each
     call), interleaved in blocks; medians.
Exits 1 if check 1 or 2 fails.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="cuda-check.json")
    p.add_argument("--calls", type=int, default=400, help="timed calls per helper, batch and variant")
    args = p.parse_args()

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
            blocks, per = 8, max(1, args.calls // 8)
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
    ok = all(untouched.values()) and all(identical.values()) and all(s[0] == "not-needed" for s in out["states"].values())
    out["ok"] = ok
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({k: out[k] for k in ("device", "torch", "states", "helpers_are_upstreams_compiled", "dynamo_frames", "ok")}, indent=1))
    print("bit-identical:", all(identical.values()), f"({len(identical)} comparisons)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
