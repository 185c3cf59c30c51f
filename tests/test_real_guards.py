"""The registry's guards against the real sglang 0.5.13 and 0.5.23, on a simulated NPU.

The simulation (fake ``torch.npu`` plus stub torch_npu/torchair/sgl_kernel_npu/acl
packages) is deep enough to import sglang's scheduler: ~550 sglang modules
for 0.5.13, ~970 for 0.5.23.  0.5.13 is the venv's own sglang; 0.5.23 lives in
``<venv>/sglang-0.5.23`` and is chosen with PYTHONPATH (scripts/make_sglang_venv.sh).
"""

import json
import os

import pytest
from conftest import RELEASES, RESULT, ROOT, TESTS, clean_env, run_python
from test_real_sglang import needs_sglang, sglang_python

VERSIONS = RELEASES  # both with NPU_COMPAT_TEST_RELEASES=all (conftest)

SIMULATE = """
from support import fake_npu, npu_stubs
fake_npu.install(); npu_stubs.install()
"""

LOAD = """
import importlib, sys
import sglang.srt.managers.scheduler
for name in ("sglang.srt.layers.rotary_embedding.utils", "sglang.srt.layers.rotary_embedding.rope_variant",
             "sglang.srt.models.llama4", "sglang.srt.models.minimax_vl_common"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # minimax_vl_common is new in 0.5.23
"""

PROBE = """
import torch, types
import torch._dynamo.utils as du
from npu_compat import _wrappers, registry
import npu_compat
def compiled_bindings(eager_only_of=None):
    out = []
    for name, m in list(sys.modules.items()):
        if m is None or not name.startswith("sglang"):
            continue
        d = m.__dict__
        holders = [(name, d)] + [(name + ":" + v.__qualname__, v.__dict__) for v in list(d.values())
                                 if isinstance(v, type) and v.__dict__.get("__module__") == name]
        for where, hd in holders:
            for k, v in list(hd.items()):
                f = v.__func__ if type(v) in (staticmethod, classmethod) else v
                if _wrappers.is_compiled(f):
                    e = _wrappers.eager_of(f)
                    key = (e.__module__, e.__qualname__)
                    if eager_only_of is None or key in eager_only_of:
                        out.append(where + "." + k)
    return out
guards = [r for r in registry.all_patches() if r.kind == "guard" and r.default]
sites = {(r.module, r.qualname) for r in guards}
states = {s.name: s.state for s in npu_compat.status()}
left = compiled_bindings(sites)
calls = {}
u = sys.modules["sglang.srt.layers.rotary_embedding.utils"]
rv = sys.modules["sglang.srt.layers.rotary_embedding.rope_variant"]
q, k = torch.rand(4, 2, 8), torch.rand(4, 2, 8)
cos, sin = torch.rand(4, 1, 8), torch.rand(4, 1, 8)   # 3-D cos: the NPU path falls back to the native one
f0 = sum(du.counters["frames"].values())
got = u.apply_rotary_pos_emb_npu(q, k, cos, sin)
c, s_ = cos.unsqueeze(1), sin.unsqueeze(1)
want = (q * c + u.rotate_half(q) * s_, k * c + u.rotate_half(k) * s_)  # rotary embedding, written out
calls["rotary"] = bool(torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1]))
L = sys.modules["sglang.srt.models.llama4"]
me = types.SimpleNamespace(_get_attn_scale=lambda positions: torch.full((3, 1), 2.0))
calls["llama4"] = L.Llama4Attention._mul_attn_scale(me, torch.arange(3), torch.ones(3, 4)).tolist() == [[2.0] * 4] * 3
frames = sum(du.counters["frames"].values()) - f0
same = vars(rv).get("apply_rotary_pos_emb_native") is vars(u)["apply_rotary_pos_emb_native"]
"""


def run_version(version, code, env=None, timeout=600):
    py = sglang_python()
    venv = os.path.dirname(os.path.dirname(os.path.abspath(py)))
    path = [ROOT, TESTS] if version == "0.5.13" else [ROOT, os.path.join(venv, "sglang-0.5.23"), TESTS]
    env = clean_env(PYTHONPATH=os.pathsep.join(path), **(env or {}))
    proc = run_python(py, code, env, timeout=timeout)  # forked from a torch-imported zygote where it may be
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return proc, json.loads(line[len(RESULT):])
    raise AssertionError(f"child reported nothing (rc={proc.returncode})\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


SNAP = """
def snap():
    out = {}
    for name, m in list(sys.modules.items()):
        if m is None or not name.startswith("sglang"):
            continue
        out[name] = {k: id(v) for k, v in m.__dict__.items()}
        for v in list(m.__dict__.values()):
            if isinstance(v, type) and v.__dict__.get("__module__") == name:
                out[name + ":" + v.__qualname__] = {k: id(x) for k, x in v.__dict__.items()}
    return out
"""

EMIT = """
import sglang
from support import report
report.emit(version=sglang.__version__, states=states, left=left, calls=calls, frames=frames, same=same,
            n=sum(1 for m in sys.modules if m.startswith("sglang")))
"""


@needs_sglang
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("route", ["import-first", "plugin-late"])
def test_registry_guards_on_simulated_npu(version, route):
    if route == "import-first":
        code = SIMULATE + "import npu_compat\n" + LOAD
    else:  # sglang's plugin loader runs after the scheduler imported its modules
        code = SIMULATE + LOAD + SNAP + "before = snap()\nfrom npu_compat import plugin\nplugin.load()\n"
    emit = EMIT
    if route == "plugin-late":  # deactivate() puts every binding back
        emit = EMIT.replace("report.emit(", "npu_compat.deactivate()\nreport.emit(restored=snap() == before, ")
    _, r = run_version(version, code + PROBE + emit)
    if route == "plugin-late":
        assert r["restored"] is True
    assert r["version"] == version
    assert r["n"] > 500
    assert r["states"]["rotary-apply-native"] == "applied"
    assert r["states"]["llama4-mul-attn-scale"] == "applied"
    assert r["states"]["minimax-vl-rope-applier"] == ("applied" if version == "0.5.23" else "absent")
    assert r["states"]["rotary-rl-on-policy"] == ("applied" if version == "0.5.13" else "upstream-fixed")
    assert r["states"]["dflash-swiglu-alpha-limit"] == "opt-in"
    assert r["states"]["ernie-vl-rotary"] == "opt-in"
    # its module is not loaded here; 0.5.13 has none
    assert r["states"]["hyperconnection-compute"] == ("pending" if version == "0.5.23" else "absent")
    assert r["states"]["overlap-assert-nonneg"] == "upstream-fixed"
    assert r["states"]["overlap-gather-spec-extras"] == "absent"
    assert r["left"] == []  # no binding of a guarded site is still compiled, in any loaded module
    assert r["same"] is True  # rope_variant's own binding is the very eager function
    assert r["calls"] == {"rotary": True, "llama4": True}
    assert r["frames"] == 0


@needs_sglang
@pytest.mark.parametrize("version", VERSIONS)
def test_eager_all_leaves_nothing_compiled_and_intercepts_call_time_compiles(version):
    code = SIMULATE + LOAD + """
from npu_compat import plugin
plugin.load()
import torch
from npu_compat import _wrappers, core
# a compilation made at call time by sglang code (as GatedResidual.__init__ does)
ns = {"__name__": "sglang.srt.layers.hyperconnection_like", "torch": torch}
exec("def make(fn):\\n    return torch.compile(fn)\\n", ns)
made = ns["make"](lambda t: t * 2)
""" + PROBE + """
from support import report
report.emit(all_left=compiled_bindings(), made=_wrappers.kind(made), res=made(torch.ones(2)).tolist(),
            walk=core._state.walk_ms, audit=len(core.compiles()), frames=frames)
"""
    _, r = run_version(version, code, env={"NPU_COMPAT_EAGER": "all"})
    assert r["all_left"] == []
    assert r["made"] == "plain" and r["res"] == [2.0, 2.0]
    assert r["audit"] >= 5  # the compiled functions found loaded, and the intercepted one
    assert r["frames"] == 0


@needs_sglang
@pytest.mark.parametrize("version", VERSIONS)
def test_off_npu_every_attribute_of_every_loaded_sglang_module_is_identical(version):
    code = LOAD + SNAP + """
import torch, torch._dynamo
tc, opt = torch.compile, torch._dynamo.optimize
before = snap()
import npu_compat
from npu_compat import plugin, core
plugin.load()
npu_compat.activate()
after = snap()
from support import report
report.emit(same=after == before, modules=len(before), tc=torch.compile is tc and torch._dynamo.optimize is opt,
            walk=core._state.walk_ms,
            states=sorted(set(s.state for s in npu_compat.status())))
"""
    _, r = run_version(version, code, env={"NPU_COMPAT_EAGER": "all"})
    assert r["same"] is True and r["modules"] > 500
    assert r["tc"] is True and r["walk"] is None
    assert "applied" not in r["states"]


@needs_sglang
@pytest.mark.parametrize("disabled", [False, True])
def test_call_time_guard_hyperconnection_0_5_23(disabled):
    # GatedResidual.__init__ compiles two closures per instance; NPU tensors always take them.
    code = SIMULATE + """
import sys, torch
import npu_compat
import torch._dynamo.utils as du
from sglang.srt.layers.hyperconnection import GatedResidual, HyperConnectionConfig
from npu_compat import _wrappers
g = GatedResidual(HyperConnectionConfig(params_dtype=torch.float32))
kinds = [_wrappers.kind(g._mix_compute), _wrappers.kind(g._combine_compute)]
frames = None
if kinds == ["plain", "plain"]:
    f0 = sum(du.counters["frames"].values())
    try:
        g.mix(torch.rand(3, 4 * 64))  # [tokens, hc_count * hidden], on the CPU
        frames = sum(du.counters["frames"].values()) - f0
    except Exception as exc:
        frames = repr(exc)
from support import report
report.emit(kinds=kinds, frames=frames, state={s.name: s.state for s in npu_compat.status()}["hyperconnection-compute"])
"""
    env = {"NPU_COMPAT_DISABLE": "hyperconnection-compute"} if disabled else None
    _, r = run_version("0.5.23", code, env=env)
    if disabled:
        assert r["kinds"] == ["compiled", "compiled"] and r["state"] == "disabled"
    else:
        assert r["kinds"] == ["plain", "plain"] and r["state"] == "applied"
        assert r["frames"] == 0
