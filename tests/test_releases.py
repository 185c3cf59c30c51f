"""Every release's claims: the records' ``versions``, the release check, ``absent`` modules, rotary-rl-on-policy.

The release check itself (scripts/check_releases.py over every release from
0.5.11 to 0.5.23) runs as its own CI step (README, command ``releases``);
here it is run on small trees that stand for releases, so that a wrong
claim is seen to fail it.
"""

import importlib.util
import os
import textwrap

import pytest
from conftest import ROOT, run_py

from npu_compat import registry


def load_script():
    spec = importlib.util.spec_from_file_location("check_releases", os.path.join(ROOT, "scripts", "check_releases.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- versions claims ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, release, claimed",
    [
        ("0.5.11 to 0.5.14", "0.5.13.post1", True),
        ("0.5.11 to 0.5.14", "0.5.15", False),
        ("0.5.11 to 0.5.14", "0.5.10", False),
        ("0.5.16 to 0.5.23 (the module is new in 0.5.16)", "0.5.16", True),
        ("0.5.13, 0.5.20 to 0.5.21", "0.5.14", False),
        ("0.5.13, 0.5.20 to 0.5.21", "0.5.21", True),
        ("any", "0.5.3", True),
    ],
)
def test_versions_claims_read(text, release, claimed):
    assert registry.claims(text, release) is claimed


@pytest.mark.parametrize("text", ["0.5.23 and later", "recent", "0.5.14 to 0.5.13", "", "0.5"])
def test_a_guard_whose_versions_cannot_be_read_is_a_bad_record(text):
    with pytest.raises(ValueError, match="versions"):
        registry.Guard(name="x", module="sglang.a", qualname="f", why="w", evidence="e", versions=text or " ",
                       upstream="u", remove_when="r")  # fmt: skip


def test_every_guard_of_the_registry_has_readable_versions():
    guards = [r for r in registry.all_patches() if r.kind == "guard"]
    assert guards and all(registry.release_ranges(r.versions) for r in guards)


# --- the release check, on trees that stand for releases -----------------------------------

BASE_COMPILED = """
import torch
from sglang.srt.layers.rotary_embedding.utils import apply_rotary_emb

class RotaryEmbedding:
    def __init__(self):
        self._apply_rotary_emb_wrapped = torch.compile(dynamic=True)(apply_rotary_emb)
"""
BASE_FIXED = BASE_COMPILED.replace("torch.compile(dynamic=True)", "torch.compile(dynamic=True, disable=_is_npu)")


def release_tree(root, base_source):
    pkg = root / "sglang" / "srt" / "layers" / "rotary_embedding"
    pkg.mkdir(parents=True)
    for d in (root / "sglang", root / "sglang" / "srt", root / "sglang" / "srt" / "layers", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "utils.py").write_text("def apply_rotary_emb(x, cos, sin, neox):\n    return x\n")
    (pkg / "base.py").write_text(textwrap.dedent(base_source))
    return str(root)


def test_the_release_check_passes_a_true_claim_and_names_a_wrong_one(tmp_path):
    check = load_script().check
    rec = registry.by_name()["rotary-rl-on-policy"]  # claims 0.5.11 to 0.5.14
    compiled = release_tree(tmp_path / "a", BASE_COMPILED)
    fixed = release_tree(tmp_path / "b", BASE_FIXED)
    problems, _ = check({"0.5.14": compiled, "0.5.15": fixed}, [rec])
    assert problems == []
    problems, _ = check({"0.5.14": fixed, "0.5.15": compiled}, [rec])
    assert len(problems) == 1 and problems[0].startswith("rotary-rl-on-policy: versions says")
    assert "compiled on NPU in 0.5.15" in problems[0] and "0.5.14: guarded" in problems[0]


# --- calls guards: upstream's own disable=_is_npu ---------------------------------------------

CALLS = '''
def unguarded(self, f):
    self.x = torch.compile(dynamic=True)(f)
def guarded(self, f):
    self.x = torch.compile(dynamic=True, disable=_is_npu)(f)
def guarded_call(self, f):
    self.x = torch.compile(f, disable=_is_npu)
def half(self, f):
    self.x = torch.compile(f, disable=_is_npu)
    self.y = torch.compile(f)
def other_device(self, f):
    self.x = torch.compile(f, disable=_is_hip)
'''


def test_a_calls_site_is_upstream_fixed_only_when_every_compile_passes_disable_is_npu():
    from npu_compat import apply

    ns = {}
    exec(CALLS, ns)
    got = {name: apply._every_compile_disabled_on_npu(ns[name].__code__) for name in
           ("unguarded", "guarded", "guarded_call", "half", "other_device")}  # fmt: skip
    assert got == {"unguarded": False, "guarded": True, "guarded_call": True, "half": False, "other_device": False}


# --- absent: the module's file is not in the installed sglang ----------------------------------


def test_a_record_whose_module_this_sglang_lacks_is_absent_not_pending(tmp_path):
    root = tmp_path / "tree"
    layers = root / "sglang" / "srt" / "layers"
    layers.mkdir(parents=True)
    for d in (root / "sglang", layers):  # sglang/srt is a namespace package, as in the wheels
        (d / "__init__.py").write_text("")
    (layers / "hyperconnection.py").write_text("X = 1\n")
    _, r = run_py(
        """
import npu_compat, sys
import sglang
from support import report
report.emit(states=report.all_states(), reasons={s.name: s.reason for s in npu_compat.status()},
            loaded=sorted(m for m in sys.modules if m.startswith("sglang")))
""",
        tree=str(root),
    )
    assert r["states"]["hyperconnection-compute"] == "pending"  # its file is there: it may still be imported
    assert r["states"]["llama4-mul-attn-scale"] == "absent"
    assert r["states"]["minimax-vl-rope-applier"] == "absent"
    assert r["reasons"]["llama4-mul-attn-scale"] == "the installed sglang has no module sglang.srt.models.llama4"
    assert r["loaded"] == ["sglang"]  # found by looking at files: nothing was imported


# --- rotary-rl-on-policy on the real sglang ------------------------------------------------------

from test_real_guards import SIMULATE, run_version  # noqa: E402
from test_real_sglang import needs_sglang, sglang_python  # noqa: E402,F401 - the skipif condition names it

ROTARY = SIMULATE + """
import npu_compat
import torch, types
import torch._dynamo.utils as du
torch.Tensor.cuda = lambda self, *a, **k: self  # what torch_npu.contrib.transfer_to_npu does: .cuda() is the NPU
from sglang.srt import server_args
server_args.set_global_server_args_for_scheduler(types.SimpleNamespace(rl_on_policy_target="fsdp"))
from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding
from npu_compat import _wrappers
emb = RotaryEmbedding(64, 64, 256, 10000, True, torch.float32)
kind = _wrappers.kind(emb._apply_rotary_emb_wrapped)
q, k = torch.rand(3, 2 * 64), torch.rand(3, 2 * 64)
f0 = sum(du.counters["frames"].values())
close = False
try:
    out = emb.forward_native(torch.arange(3), q.clone(), k.clone())  # the path MultiPlatformOp.forward takes
    ran = "ok"
    w = emb._apply_rotary_emb_wrapped
    emb._apply_rotary_emb_wrapped = getattr(w, "_torchdynamo_orig_callable", w)
    want = emb.forward_native(torch.arange(3), q.clone(), k.clone())  # the same with the plain function
    close = all(torch.equal(a, b) for a, b in zip(out, want))
except Exception as exc:
    ran = type(exc).__name__
import sglang
from support import report
from npu_compat import core
state = {s.name: s.state for s in npu_compat.status()}["rotary-rl-on-policy"]
report.emit(version=sglang.__version__, kind=kind, ran=ran, frames=sum(du.counters["frames"].values()) - f0,
            state=state, forward=emb._forward_method.__name__, close=close,
            fell_back=sorted(c["target"] for c in core.fell_back()))
"""


@needs_sglang
@pytest.mark.parametrize("setting", ["guard", "no guard", "no guard, no fallback"])
def test_rotary_rl_on_policy_eager_on_npu_0_5_13(setting):
    env = {}
    if setting != "guard":
        env["NPU_COMPAT_DISABLE"] = "rotary-rl-on-policy"
    if setting.endswith("no fallback"):
        env["NPU_COMPAT_FALLBACK"] = "0"
    _, r = run_version("0.5.13", ROTARY, env=env)
    assert r["version"] == "0.5.13" and r["forward"] == "forward_native"
    if setting == "guard":
        assert r["state"] == "applied" and r["kind"] == "plain"
        assert r["ran"] == "ok" and r["frames"] == 0 and r["fell_back"] == []  # dynamo compiled nothing
    elif setting == "no guard":  # sglang's compile reaches inductor on NPU, fails, and the site falls back
        assert r["state"] == "disabled" and r["kind"] == "compiled" and r["ran"] == "ok"
        assert r["fell_back"] == ["sglang.srt.layers.rotary_embedding.utils.apply_rotary_emb"], r["fell_back"]
        assert r["close"]  # the eager result is the function's own
    else:  # what 0.5.13 does without npu-compat: inductor on NPU (it fails on the simulated one)
        assert r["state"] == "disabled" and r["kind"] == "compiled" and r["ran"] != "ok" and r["fell_back"] == []


@needs_sglang
def test_rotary_rl_on_policy_upstream_fixed_0_5_23():
    # 0.5.15 and later pass disable=_is_npu themselves (0.5.23 reads the setting elsewhere).
    _, r = run_version("0.5.23", SIMULATE + """
import npu_compat
import sglang.srt.layers.rotary_embedding.base
from support import report
report.emit(state={s.name: s.state for s in npu_compat.status()}["rotary-rl-on-policy"])
""")
    assert r["state"] == "upstream-fixed"
