"""The fallback on the real sglang 0.5.13 and 0.5.23, on the simulated NPU (scheduler imported).

Sites no record guards, by both routes (import first; sglang's plugin loaded
after the scheduler's ~990 modules):

* NPU-backend sites (``backend=get_compiler_backend()``, torchair on NPU)
  with the stub torchair failing in the backend call or on the graph's first
  run: ``layers/moe/kt_ep_wrapper.py`` ``mask_cpu_expert_ids`` (writes into
  its input) and ``layers/rotary_embedding/utils.py``
  ``apply_rotary_pos_emb_native`` (its record disabled, so nothing guards it);
* a default-backend site, ``fused_moe._swiglu_silu_clamp_mul``, which fails
  in dynamo itself on the simulated NPU (stream tracking).
"""

import pytest
from test_real_guards import LOAD, PROBE, SIMULATE, VERSIONS, run_version
from test_real_sglang import needs_sglang, sglang_python  # noqa: F401 - needs_sglang's condition reads it

CASES = """
import os, torch, importlib
import torch._dynamo.utils as du
from npu_compat import core
from support import report
kt = importlib.import_module("sglang.srt.layers.moe.kt_ep_wrapper")
rot = importlib.import_module("sglang.srt.layers.rotary_embedding.utils")
fm = importlib.import_module("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe")
accelerator = torch.accelerator.is_available
def attempt(fn, *args):
    try:
        out = fn(*args)
        return {"ok": [o.tolist() for o in out] if isinstance(out, tuple) else out.tolist()}
    except Exception as exc:
        return {"raised": type(exc).__name__}
def entry(fn):
    for c in core.compiles():
        if c["target"].endswith("." + fn):
            return c
out = {}
torch.accelerator.is_available = lambda: False      # dynamo traces; the stub NPU compiler fails
os.environ["NPU_STUB_TORCHAIR"] = MASK_MODE
ids = torch.tensor([[0, 5], [3, 7]])
out["mask1"] = attempt(kt.mask_cpu_expert_ids, ids.clone(), 4)
f0 = sum(du.counters["frames"].values())
out["mask2"] = attempt(kt.mask_cpu_expert_ids, ids.clone(), 4)
out["mask_frames"] = sum(du.counters["frames"].values()) - f0
os.environ["NPU_STUB_TORCHAIR"] = ROT_MODE
q, k, cos, sin = torch.ones(2, 1, 4), torch.ones(2, 1, 4), torch.ones(2, 4), torch.zeros(2, 4)
out["rot1"] = attempt(rot.apply_rotary_pos_emb_native, q, k, cos, sin)
out["rot2"] = attempt(rot.apply_rotary_pos_emb_native, q, k, cos, sin)
torch.accelerator.is_available = accelerator         # dynamo's own failure on the simulated NPU
out["own"] = attempt(fm._swiglu_silu_clamp_mul, torch.ones(5), 7.0)   # fails eagerly too
out["swiglu"] = attempt(fm._swiglu_silu_clamp_mul, torch.ones(4), 7.0)
out["entries"] = {n: entry(n) for n in ("mask_cpu_expert_ids", "apply_rotary_pos_emb_native", "_swiglu_silu_clamp_mul")}
out["route"] = npu_compat.route()
report.emit(**out)
"""


def _code(route, mask_mode, rot_mode):
    head = SIMULATE + ("import npu_compat\n" + LOAD if route == "import-first" else LOAD + "from npu_compat import plugin\nplugin.load()\nimport npu_compat\n")
    return head + f"MASK_MODE, ROT_MODE = {mask_mode!r}, {rot_mode!r}\n" + CASES


@needs_sglang
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "route, mask_mode, rot_mode",
    [("import-first", "fail-first-run", "fail-compile"), ("plugin-late", "fail-compile", "fail-first-run")],
)
def test_unguarded_sites_fall_back_on_the_real_sglang(version, route, mask_mode, rot_mode):
    proc, r = run_version(version, _code(route, mask_mode, rot_mode), env={"NPU_COMPAT_DISABLE": "rotary-apply-native"})
    assert r["route"] == ("import" if route == "import-first" else "plugin")
    masked = [[0, -1], [3, -1]]
    # fail-first-run: it writes into its input, which was copied before the run and put back
    # before the graph ran eagerly, so the call is served and the input written once
    assert r["mask1"] == {"ok": masked}
    assert r["mask2"] == {"ok": masked} and r["mask_frames"] == 0
    assert r["rot1"] == r["rot2"] == {"ok": [[[[1.0] * 4]] * 2] * 2}
    assert r["own"] == {"raised": "RuntimeError"}  # the function's own error (sizes 3 and 2)
    assert r["swiglu"]["ok"] == pytest.approx([0.7310586] * 2)  # silu(1) * 1, served eagerly
    e = r["entries"]
    stages = {"fail-compile": "compile", "fail-first-run": "first run"}
    assert e["mask_cpu_expert_ids"]["fell_back"] == {"stage": stages[mask_mode], "type": "GeError",
                                                     "message": e["mask_cpu_expert_ids"]["fell_back"]["message"]}
    assert e["apply_rotary_pos_emb_native"]["fell_back"]["stage"] == stages[rot_mode]
    assert e["_swiglu_silu_clamp_mul"]["fell_back"]["type"] == "InternalTorchDynamoError"
    for name, fn in (("mask_cpu_expert_ids", "kt_ep_wrapper"), ("apply_rotary_pos_emb_native", "utils")):
        assert e[name]["eager_by"] == "fallback" and e[name]["backend"] != "inductor"
    warned = [ln for ln in proc.stderr.splitlines() if "failed on NPU" in ln]
    assert len(warned) == 3, warned
    assert any("NPU_COMPAT_EAGER=sglang.srt.layers.moe.kt_ep_wrapper:mask_cpu_expert_ids" in w for w in warned)


@needs_sglang
@pytest.mark.parametrize("version", VERSIONS)
def test_with_the_fallback_off_the_same_calls_raise(version):
    _, r = run_version(
        version, _code("import-first", "fail-compile", "fail-first-run"),
        env={"NPU_COMPAT_DISABLE": "rotary-apply-native", "NPU_COMPAT_FALLBACK": "0"},
    )
    assert r["mask1"] == {"raised": "BackendCompilerFailed"}
    assert r["rot1"] == {"raised": "GeError"}
    assert "raised" in r["swiglu"]
    assert all(x["fell_back"] is None for x in r["entries"].values())


@needs_sglang
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("value", ["all", "everything"])
def test_eager_all_keeps_patch_model_npu_compiled_while_every_helper_is_eager(version, value):
    code = SIMULATE + LOAD + """
import importlib, torch
from npu_compat import plugin
plugin.load()
from npu_compat import _wrappers, core
runner = importlib.import_module("sglang.srt.hardware_backend.npu.graph_runner.npu_graph_runner")
class Tiny(torch.nn.Module):
    def forward(self, x):
        return x + 1
with runner.patch_model_npu(Tiny(), True, 1, None) as graph:  # a context manager in both releases
    pass
""" + PROBE + """
from support import report
kept = [c for c in core.compiles() if c["where"].startswith(runner.__name__)]
report.emit(graph=_wrappers.kind(graph), left=compiled_bindings(), kept=kept)
"""
    _, r = run_version(version, code, env={"NPU_COMPAT_EAGER": value})
    assert r["left"] == []  # every helper sglang compiled runs eagerly
    (site,) = r["kept"]
    if value == "all":
        assert r["graph"] == "compiled" and site["eager"] is False and "NPU graph mode" in site["kept"]
    else:  # the old meaning of all, under its own name
        assert r["graph"] == "plain" and site["eager_by"] == "setting"
