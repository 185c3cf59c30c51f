"""Guards (eager on NPU for a compiled site), the NPU_COMPAT_EAGER switch and the compile audit.

A small sglang-shaped tree is written per test: a module with compiled
sites (a function, a method, a staticmethod), another module that binds the
compiled function by ``from ... import`` and as a class attribute, and a
function that compiles at call time.  Guards are named with
``NPU_COMPAT_EAGER=module:qualname``, which goes through the same guard
records as the registry's.  Each case runs in its own interpreter.
"""

import json
import os

import pytest
from conftest import run_py
from fixtures import layers_tree

NPU = "from support import fake_npu; fake_npu.install()\n"

ROPE = '''
import torch

@torch.compile(dynamic=True)
def rope(x, y):
    return x * 2 + y

class Rotary:
    @torch.compile
    def forward(self, x):
        return x + 1

    @staticmethod
    @torch.compile(dynamic=True)
    def helper(x):
        return x - 1

@torch.compile(backend="eager")
def cheap(x):
    return x + 2

def late(fn):
    # a compilation made at call time, inside a function body
    return torch.compile(fn)

def user_fn(x):
    return x * 3
'''

USER = '''
from sglang.srt.layers.rope import rope

class Layer:
    kernel = staticmethod(rope)
    direct = rope

def run(x):
    return rope(x, x)
'''

SITES = "sglang.srt.layers.rope:rope,sglang.srt.layers.rope:Rotary.forward,sglang.srt.layers.rope:Rotary.helper"

PROBE = """
import torch, json
import torch._dynamo.utils as du
from npu_compat import _wrappers
import sglang.srt.layers.rope as rope_mod, sglang.srt.layers.user as user_mod
from support import report
def k(obj):
    return _wrappers.kind(obj.__func__ if isinstance(obj, staticmethod) else obj)
x = torch.ones(3)
out = [user_mod.run(x).tolist(), user_mod.Layer.kernel(x, x).tolist(), rope_mod.Rotary().forward(x).tolist(),
       rope_mod.Rotary.helper(x).tolist()]
kinds = {
    "rope.rope": k(rope_mod.rope), "user.rope": k(vars(user_mod)["rope"]),
    "Layer.kernel": k(vars(user_mod.Layer)["kernel"]), "Layer.direct": k(vars(user_mod.Layer)["direct"]),
    "Rotary.forward": k(vars(rope_mod.Rotary)["forward"]), "Rotary.helper": k(vars(rope_mod.Rotary)["helper"]),
}
"""


def make_tree(tmp_path):
    return layers_tree(tmp_path / "tree", {"rope": ROPE, "user": USER})


def test_named_sites_on_npu_every_binding_eager_and_nothing_compiles(tmp_path):
    _, r = run_py(
        NPU + "import npu_compat\n" + PROBE + """
report.emit(kinds=kinds, out=out, frames=report.frames(), states=report.all_states(),
            same=vars(user_mod)["rope"] is rope_mod.rope)
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": SITES},
    )
    assert set(r["kinds"].values()) == {"plain"}, r["kinds"]
    assert r["same"] is True  # the other module holds the very eager function
    assert r["frames"] == 0  # dynamo processed nothing
    assert r["out"] == [[3.0] * 3, [3.0] * 3, [2.0] * 3, [0.0] * 3]
    named = {k: v for k, v in r["states"].items() if k.startswith("eager:")}
    assert set(named.values()) == {"applied"} and len(named) == 3


@pytest.mark.parametrize("route", ["late-plugin", "late-api"])
def test_late_activation_rewires_bindings_made_before_it(tmp_path, route):
    # The sglang plugin runs after the scheduler imported its modules: every
    # binding made by then is rewired, and deactivate() puts each one back.
    activate = (
        "from npu_compat import plugin; plugin.load()" if route == "late-plugin" else "npu_compat.activate()"
    )
    _, r = run_py(
        NPU + """
import sglang.srt.layers.user, sglang.srt.layers.rope
before = {k: id(v) for k, v in vars(sglang.srt.layers.user).items()}
import npu_compat
""" + activate + "\n" + PROBE + """
from npu_compat import core
first = dict(kinds=kinds, out=out, frames=report.frames(), route=npu_compat.route(), walk=core._state.walk_ms)
npu_compat.deactivate()
after = {k: id(v) for k, v in vars(sglang.srt.layers.user).items()}
import sglang.srt.layers.rope as r2
report.emit(**first, restored=after == before, kinds_after=k(r2.rope), helper_after=k(vars(r2.Rotary)["helper"]))
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": SITES},
    )
    assert set(r["kinds"].values()) == {"plain"}, r["kinds"]
    assert r["frames"] == 0
    assert r["route"] == ("plugin" if route == "late-plugin" else "api")
    assert r["restored"] is True
    assert r["kinds_after"] == "compiled" and r["helper_after"] == "compiled"


def test_eager_all_intercepts_call_time_compiles_and_audits(tmp_path):
    _, r = run_py(
        NPU + "import npu_compat\n" + PROBE + """
import npu_compat
f = rope_mod.late(rope_mod.user_fn)          # torch.compile inside a function body
outside = torch.compile(lambda t: t + 1)      # not sglang's: left alone
rep = npu_compat.report()
report.emit(kinds=kinds, late=_wrappers.kind(f), outside=_wrappers.kind(outside), res=f(x).tolist(),
            frames=report.frames(), compiles=rep["compiles"], tc=getattr(torch.compile, "_npu_compat", False),
                hook=getattr(torch._dynamo.optimize, "_npu_compat", False))
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "all"},
    )
    assert set(r["kinds"].values()) == {"plain"}
    assert r["late"] == "plain" and r["res"] == [3.0] * 3
    assert r["outside"] == "compiled"
    assert r["frames"] == 0
    assert r["tc"] is False and r["hook"] is True  # torch.compile stays torch's own; dynamo's optimize listens
    targets = {c["target"]: c for c in r["compiles"]}
    assert "sglang.srt.layers.rope.user_fn" in targets
    assert targets["sglang.srt.layers.rope.user_fn"]["where"].startswith("sglang.srt.layers.rope:late:")
    assert all(c["eager"] and c["why"] == "NPU_COMPAT_EAGER=all" for c in r["compiles"])
    assert {"sglang.srt.layers.rope.rope", "sglang.srt.layers.rope.Rotary.forward"} <= set(targets)


def test_audit_without_eager_records_what_npu_compiles_and_whether_called(tmp_path):
    # NPU_COMPAT_DEVICE=npu: an NPU by setting, so that dynamo can really run here.
    _, r = run_py(
        """
import npu_compat, torch
import sglang.srt.layers.rope as rope_mod
rope_mod.cheap(torch.ones(2))
from support import report
rep = npu_compat.report()
report.emit(compiles=rep["compiles"], frames=report.frames())
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_DEVICE": "npu"},
    )
    by = {c["target"]: c for c in r["compiles"]}
    assert by["sglang.srt.layers.rope.rope"]["eager"] is False
    assert by["sglang.srt.layers.rope.rope"]["backend"] == "inductor"
    assert by["sglang.srt.layers.rope.cheap"]["backend"] == "eager"
    assert by["sglang.srt.layers.rope.cheap"]["called"] is True
    assert by["sglang.srt.layers.rope.rope"]["called"] is False
    assert r["frames"] > 0  # it really compiled: the audit tells a compiled site from an eager one


def test_report_file_one_line_per_process_many_writers(tmp_path):
    out = tmp_path / "audit.jsonl"
    # 4 Python children started at once (twice the cores here) inherit the activation
    # (bootstrap on PYTHONPATH) and each appends its record as it changes, its exit line last.
    _, r = run_py(
        """
import subprocess, sys, npu_compat
import sglang.srt.layers.rope
ps = [subprocess.Popen([sys.executable, "-c", "import sglang.srt.layers.rope"]) for i in range(4)]
from support import report
report.emit(codes=[p.wait(900) for p in ps])  # generous: 4 interpreters at once on a busy 2-core machine
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_REPORT": str(out), "NPU_COMPAT_EAGER": "all", "NPU_COMPAT_DEVICE": "npu"},
        timeout=1000,
    )
    assert r["codes"] == [0] * 4
    lines = out.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is whole JSON
    by_pid = {}
    for x in recs:
        by_pid.setdefault(x["pid"], []).append(x)
    assert len(by_pid) == 5  # the parent and its 4 children
    for mine in by_pid.values():  # each process's lines in order, its exit line last and only there
        assert [x["seq"] for x in mine] == list(range(1, len(mine) + 1))
        assert [x["exit"] for x in mine] == [False] * (len(mine) - 1) + [True]
        assert any(c["target"] == "sglang.srt.layers.rope.rope" for c in mine[-1]["compiles"])


def test_off_npu_no_interception_no_walk_every_attribute_identical(tmp_path):
    _, r = run_py(
        """
import sys, torch, torch._dynamo
tc, opt = torch.compile, torch._dynamo.optimize
import sglang.srt.layers.user, sglang.srt.layers.rope
def snap():
    out = {}
    for name, m in list(sys.modules.items()):
        if name.partition(".")[0] == "sglang" and m is not None:
            out[name] = {k: id(v) for k, v in vars(m).items()}
            for v in vars(m).values():
                if isinstance(v, type):
                    out[name + ":" + v.__qualname__] = {k: id(x) for k, x in vars(v).items()}
    return out
before = snap()
import npu_compat
from npu_compat import core, plugin
plugin.load()
import sglang.srt.layers.rope
from support import report
report.emit(same=snap() == before, tc=torch.compile is tc and torch._dynamo.optimize is opt, walk=core._state.walk_ms,
            compiles=core.compiles(),
            states=report.all_states())
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "all"},
    )
    assert r["same"] is True and r["tc"] is True
    assert r["walk"] is None and r["compiles"] == []
    assert "applied" not in r["states"].values()


@pytest.mark.parametrize(
    "value, warned",
    [("all", False), ("", False), ("sglang.x:y", False), ("os:path", True), ("no such thing", True), ("a:b:c", True)],
)
def test_eager_setting_understood_or_one_warning(value, warned):
    from npu_compat import audit

    import logging

    records = []

    class H(logging.Handler):
        def emit(self, rec):
            records.append(rec.getMessage())

    log = logging.getLogger("npu_compat")
    h = H()
    log.addHandler(h)
    try:
        for _ in range(3):
            audit.parse_eager(value + " ", {"some-guard"}, ("sglang",))
    finally:
        log.removeHandler(h)
    assert len(records) == (1 if warned else 0), records


def test_a_named_function_that_compiles_at_call_time(tmp_path):
    # NPU_COMPAT_EAGER=module:function, where the function's body calls torch.compile
    _, r = run_py(
        NPU + """
import npu_compat, torch
import sglang.srt.layers.rope as rope_mod
from npu_compat import _wrappers
from support import report
made = rope_mod.late(rope_mod.user_fn)
other = torch.compile(rope_mod.user_fn)  # not inside the named function: compiled as usual
report.emit(made=_wrappers.kind(made), other=_wrappers.kind(other), states=report.all_states(),
            rope=_wrappers.kind(rope_mod.rope))
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "sglang.srt.layers.rope:late"},
    )
    assert r["made"] == "plain" and r["other"] == "compiled" and r["rope"] == "compiled"
    assert r["states"]["eager:sglang.srt.layers.rope:late"] == "applied"


def test_a_named_site_keeps_its_case_in_status(tmp_path):
    # The record NPU_COMPAT_EAGER=module:qualname makes is named after the site as written
    # (it was lower-cased: "rotary.forward", which is neither the site nor what the user pinned).
    _, r = run_py(
        NPU + "import npu_compat\nimport sglang.srt.layers.rope\nfrom support import report\n"
        "report.emit(states=report.all_states())\n",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "sglang.srt.layers.rope:Rotary.forward", "NPU_COMPAT_DISABLE": "no-such-guard"},
    )
    assert r["states"]["eager:sglang.srt.layers.rope:Rotary.forward"] == "applied"
