"""The per-site eager fallback on NPU, and the compile hook it rests on.

Each case runs in a fresh interpreter on the simulated NPU, over a small
sglang-shaped tree.  Two kinds of compile failure are real here:

* dynamo's own: on the simulated NPU every dynamo compile fails in its
  stream tracking (``torch.accelerator.current_stream()``: "PyTorch is not
  linked with support for npu devices"), before any backend runs;
* the NPU compiler's: with ``torch.accelerator.is_available`` made False
  (dynamo then traces), the stub torchair backend fails in the backend call
  (``NPU_STUB_TORCHAIR=fail-compile``) or on the compiled graph's first run
  (``fail-first-run``), as torchair's GE compile does.

Every test that expects a fallback also shows, with ``NPU_COMPAT_FALLBACK=0``
or by the error it re-raises, that the failure is real.
"""

import json
import os

import pytest
from conftest import run_py
from fixtures import layers_tree

NPU = """
from support import fake_npu, npu_stubs
fake_npu.install(); npu_stubs.install()
"""
TRACE = "import torch; torch.accelerator.is_available = lambda: False\n"  # dynamo can trace

OPS = '''
import torch
import torchair

NPU_BACKEND = torchair.get_npu_backend()
_is_npu = True

@torch.compile(dynamic=True)
def scale(x):                      # default backend
    return x * 2 + 1

@torch.compile(dynamic=True, backend=NPU_BACKEND)
def gather(buf, idx):              # NPU backend, reads its inputs only
    return buf[idx] * 1

@torch.compile(dynamic=True, backend=NPU_BACKEND)
def invalidate(buf, idx):          # NPU backend, writes into its input
    buf[idx] = -1
    return buf.sum()

@torch.compile(dynamic=True, backend=NPU_BACKEND, fullgraph=True)
def rows(x):
    return x.sum(dim=0)

@torch.compile(dynamic=True, backend=NPU_BACKEND)
def checked(x):
    if x.sum() > 100:
        raise ValueError("values too large")
    return x + 1

def make_late():                   # compiles in its body, at call time
    return torch.compile(lambda t: t * 5)

def make_guarded():                # upstream's remedy already in place
    return torch.compile(lambda t: t * 5, disable=_is_npu)

class Net(torch.nn.Module):
    def forward(self, x):
        return x * 3

def capture(model):                # NPU graph capture, as sglang's patch_model_npu does
    return torch.compile(torch.no_grad()(model.forward), fullgraph=True, dynamic=False, backend=NPU_BACKEND)

def compile_module(m):
    m.compile(dynamic=True)
    return m

def compiler_compile(fn):
    return torch.compiler.compile(fn)

def plain(x):
    return x - 1
'''

OTHER = '''
import torch

@torch.compile
def ext(x):
    return x - 1
'''

USES_OTHER = '''
from othpkg.kern import ext
'''


def make_tree(tmp_path):
    return layers_tree(tmp_path / "tree", {"ops": OPS, "uses_other": USES_OTHER}, {"othpkg/kern.py": OTHER})


HELPERS = """
import torch, npu_compat
from npu_compat import _wrappers, core
from support import report
def entry(name):
    for c in core.compiles():
        if c["site"] == "sglang.srt.layers.ops:" + name:
            return c
def attempt(fn, *args):
    try:
        out = fn(*args)
        return {"ok": out.tolist()}
    except Exception as exc:
        return {"raised": type(exc).__name__, "msg": str(exc).splitlines()[0] if str(exc) else ""}
"""


def warnings_of(proc, site):
    return [line for line in proc.stderr.splitlines() if "failed on NPU" in line and f"NPU_COMPAT_EAGER={site}" in line]


# --- the fallback, early route -----------------------------------------------------------


@pytest.mark.parametrize(
    "case, trace, mode, fn, stage, error",
    [
        ("dynamo", False, "", "scale", "compile", "InternalTorchDynamoError"),
        ("backend", True, "fail-compile", "gather", "compile", "GeError"),
        ("first-run", True, "fail-first-run", "gather", "first run", "GeError"),
        ("fullgraph", True, "fail-compile", "rows", "compile", "GeError"),
    ],
)
def test_a_failing_compile_is_served_eagerly_with_one_warning(tmp_path, case, trace, mode, fn, stage, error):
    args = {"scale": "torch.arange(4.)", "gather": "torch.arange(6.), torch.tensor([1, 3])",
            "rows": "torch.ones(3, 2)"}[fn]  # fmt: skip
    code = NPU + (TRACE if trace else "") + "import npu_compat\n" + HELPERS + f"""
import sglang.srt.layers.ops as ops
import torch._dynamo.utils as du
eager = ops.{fn}.__wrapped__
first = attempt(ops.{fn}, {args})
f1 = report.frames()
second = attempt(ops.{fn}, {args})
report.emit(first=first, second=second, want=eager({args}).tolist(), frames_after=report.frames() - f1,
            entry=entry("{fn}"), status=npu_compat.report()["compiles"] == core.compiles())
"""
    env = {"NPU_STUB_TORCHAIR": mode}
    proc, r = run_py(code, tree=make_tree(tmp_path), env=env)
    assert r["first"] == {"ok": r["want"]} and r["second"] == {"ok": r["want"]}, r
    assert r["frames_after"] == 0  # dynamo is not entered again for that site
    fb = r["entry"]["fell_back"]
    assert fb["stage"] == stage and fb["type"] == error, fb
    assert r["entry"]["eager"] is True and r["entry"]["eager_by"] == "fallback"
    assert r["status"] is True
    assert len(warnings_of(proc, f"sglang.srt.layers.ops:{fn}")) == 1, proc.stderr[-3000:]
    # The failure is real: with the fallback off, the same call raises.
    _, off = run_py(code, tree=make_tree(tmp_path / "off"), env=dict(env, NPU_COMPAT_FALLBACK="0"))
    assert "raised" in off["first"], off
    assert off["entry"]["fell_back"] is None and off["entry"]["eager"] is False


@pytest.mark.parametrize("limit", ["default", "0"])
def test_a_graph_that_writes_its_inputs_is_rerun_only_from_a_copy(tmp_path, limit):
    """A first run that fails is run again eagerly only after what it may write is put back.

    With the copy allowed (a small buffer) the call is served eagerly and the
    buffer is written once; with nothing allowed to be copied the original
    error reaches the caller and later calls run eagerly.
    """
    proc, r = run_py(
        NPU + TRACE + "import npu_compat\n" + HELPERS + f"""
from npu_compat import fallback
if {limit!r} == "0":
    fallback.SNAPSHOT_LIMIT = 0
import sglang.srt.layers.ops as ops
buf = torch.arange(6.)
first = attempt(ops.invalidate, buf, torch.tensor([1]))
buf1 = buf.tolist()
buf2 = torch.arange(6.)
second = attempt(ops.invalidate, buf2, torch.tensor([1]))
report.emit(first=first, buf1=buf1, second=second, buf2=buf2.tolist(), entry=entry("invalidate"))
""",
        tree=make_tree(tmp_path),
        env={"NPU_STUB_TORCHAIR": "fail-first-run"},
    )
    written = [0.0, -1.0, 2.0, 3.0, 4.0, 5.0]
    if limit == "0":
        assert r["first"]["raised"] == "GeError"  # never run twice: the original error reaches the caller
    else:
        assert r["first"] == {"ok": 13.0} and r["buf1"] == written
    assert r["second"] == {"ok": 13.0} and r["buf2"] == written
    assert r["entry"]["fell_back"]["stage"] == "first run"
    assert len(warnings_of(proc, "sglang.srt.layers.ops:invalidate")) == 1


@pytest.mark.parametrize("mode", ["", "fail-compile"])
def test_the_functions_own_error_reaches_the_caller_unchanged(tmp_path, mode):
    _, r = run_py(
        NPU + TRACE + "import npu_compat\n" + HELPERS + """
import sglang.srt.layers.ops as ops
big = attempt(ops.checked, torch.full((2,), 1000.0))
after_big = entry("checked")["fell_back"]
small = attempt(ops.checked, torch.ones(2))
report.emit(big=big, after_big=after_big, small=small, entry=entry("checked"))
""",
        tree=make_tree(tmp_path),
        env={"NPU_STUB_TORCHAIR": mode},
    )
    assert r["big"] == {"raised": "ValueError", "msg": "values too large"}
    assert r["small"] == {"ok": [2.0, 2.0]}
    if mode:  # the backend failed first (evidence): the frame ran eagerly and raised its own error
        assert r["after_big"]["type"] == "GeError" and r["entry"]["fell_back"]["type"] == "GeError"
    else:
        assert r["after_big"] is None  # the function's own error is no compile failure
        assert r["entry"]["fell_back"] is None and r["entry"]["called"] is True


# --- late activation: sites compiled before npu_compat watched ------------------------------


@pytest.mark.parametrize("mode, stage", [("fail-compile", "compile"), ("fail-first-run", "first run")])
def test_sites_compiled_before_a_late_activation_fall_back_too(tmp_path, mode, stage):
    proc, r = run_py(
        NPU + TRACE + """
import sglang.srt.layers.ops as ops      # compiled before npu_compat watches
before = ops.gather
from npu_compat import plugin
plugin.load()
""" + HELPERS + """
x, i = torch.arange(6.), torch.tensor([1, 3])
first, second = attempt(ops.gather, x, i), attempt(ops.gather, x, i)
buf = torch.arange(6.)
inv = attempt(ops.invalidate, buf, torch.tensor([1]))
from npu_compat import fallback
report.emit(first=first, second=second, rebound=ops.gather is not before, entry=entry("gather"),
            inv=inv, inv_buf=buf.tolist(), inv_entry=entry("invalidate"), route=npu_compat.route(),
            armed=fallback.is_armed(ops.gather), kind=_wrappers.kind(ops.gather))
""",
        tree=make_tree(tmp_path),
        env={"NPU_STUB_TORCHAIR": mode},
    )
    # armed in place: every binding keeps torch's own compile wrapper
    assert r["route"] == "plugin" and r["rebound"] is False and r["armed"] is True and r["kind"] == "compiled"
    assert r["first"] == {"ok": [1.0, 3.0]} and r["second"] == {"ok": [1.0, 3.0]}
    assert r["entry"]["fell_back"]["stage"] == stage and r["entry"]["when"] == "found loaded"
    # it writes into its input: run again only from a copy, so the buffer is written once
    assert r["inv"] == {"ok": 13.0} and r["inv_buf"] == [0.0, -1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(warnings_of(proc, "sglang.srt.layers.ops:gather")) == 1


# --- NPU_COMPAT_EAGER=all keeps NPU graph mode ---------------------------------------------


@pytest.mark.parametrize("value", ["all", "everything"])
def test_eager_all_means_the_helpers_and_keeps_the_models_npu_compile(tmp_path, value):
    _, r = run_py(
        NPU + TRACE + "import npu_compat\n" + HELPERS + """
import sglang.srt.layers.ops as ops
net = ops.Net()
graph = ops.capture(net)
mod = ops.compile_module(ops.Net())
cc = ops.compiler_compile(ops.plain)
kinds = {n: _wrappers.kind(getattr(ops, n)) for n in ("scale", "gather", "invalidate", "rows")}
report.emit(graph=_wrappers.kind(graph), graph_out=graph(torch.ones(2)).tolist(), kinds=kinds,
            module_compiled=mod._compiled_call_impl == mod._call_impl, cc=_wrappers.kind(cc), frames=report.frames(),
            compiles=core.compiles())
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": value},
    )
    assert set(r["kinds"].values()) == {"plain"}
    assert r["module_compiled"] is True and r["cc"] == "plain"  # nn.Module.compile, torch.compiler.compile
    assert r["graph_out"] == [3.0, 3.0]
    by = {c["target"]: c for c in r["compiles"]}
    graph = [c for c in r["compiles"] if c["where"].startswith("sglang.srt.layers.ops:capture")][0]
    if value == "all":
        assert r["graph"] == "compiled"  # torch's compile wrapper, as sglang made it
        assert graph["eager"] is False and "NPU graph mode" in graph["kept"]
    else:
        assert r["graph"] == "plain" and r["frames"] == 0
        assert graph["eager"] is True and graph["eager_by"] == "setting"
    assert by["sglang.srt.layers.ops.plain"]["eager"] is True


@pytest.mark.parametrize("route", ["early", "late"])
def test_eager_all_leaves_another_packages_compile_alone_on_both_routes(tmp_path, route):
    early = route == "early"
    _, r = run_py(
        NPU + ("import npu_compat\n" if early else "")
        + "import sglang.srt.layers.uses_other as u, sglang.srt.layers.ops as ops\n"
        + ("" if early else "from npu_compat import plugin; plugin.load()\n")
        + HELPERS + """
report.emit(ext=_wrappers.kind(vars(u)["ext"]), scale=_wrappers.kind(ops.scale), route=npu_compat.route())
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "all"},
    )
    assert r["ext"] == "compiled" and r["scale"] == "plain", r


# --- @PATH lists -------------------------------------------------------------------------------


def test_an_eager_list_file_makes_its_sites_eager_from_the_start_and_bad_files_warn(tmp_path):
    good = tmp_path / "eager.txt"
    good.write_text("# pinned after a fallback\nsglang.srt.layers.ops:scale   # InternalTorchDynamoError, 8 processes\n\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("sglang.srt.layers.ops:gather\nnot a site\n")
    proc, r = run_py(
        NPU + "import npu_compat\n" + HELPERS + """
import sglang.srt.layers.ops as ops
report.emit(scale=_wrappers.kind(ops.scale), gather=_wrappers.kind(ops.gather), rows=_wrappers.kind(ops.rows),
            out=ops.scale(torch.ones(2)).tolist(), frames=report.frames(), entry=entry("scale"))
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": f"@{good},@{bad},@{tmp_path / 'missing.txt'}"},
    )
    assert r["scale"] == "plain" and r["gather"] == "plain" and r["rows"] == "compiled"
    assert r["out"] == [3.0, 3.0] and r["frames"] == 0
    assert r["entry"]["eager_by"] == "setting" and r["entry"]["fell_back"] is None
    warned = [line for line in proc.stderr.splitlines() if "NPU_COMPAT_EAGER" in line]
    assert len(warned) == 2, warned
    assert any("missing.txt" in w and "cannot read" in w for w in warned)
    assert any("bad.txt" in w and "line 2" in w for w in warned)


# --- the hook: transparent, and it knows whose compile it is --------------------------------


def test_the_hook_leaves_torch_compile_torchs_own_and_sees_through_a_tracer(tmp_path):
    _, r = run_py(
        NPU + """
import functools, inspect, _thread, time, torch, torch._dynamo
tc, opt = torch.compile, torch._dynamo.optimize
sig = inspect.signature(opt)
import npu_compat
""" + HELPERS + """
import sglang.srt.layers.ops as ops
hook = torch._dynamo.optimize
seen = []
@functools.wraps(torch.compile)
def tracer(*a, **k):           # another plugin's wrapper, put on torch.compile after npu_compat
    seen.append(1)
    return tc(*a, **k)
torch.compile = tracer
late = ops.make_late()
torch.compile = tc
done = []
_thread.start_new_thread(lambda: done.append(torch.compile(ops.plain)), ())
for _ in range(2000):
    if done: break
    time.sleep(0.01)
report.emit(same=torch.compile is tc, doc=tc.__doc__ == torch.compile.__doc__, hook=hook is not opt,
            sig=inspect.signature(hook) == sig, hookdoc=hook.__doc__ == opt.__doc__, traced=len(seen),
            late=_wrappers.kind(late), thread=_wrappers.kind(done[0]) if done else None)
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "sglang.srt.layers.ops:make_late"},
    )
    assert r["same"] is True and r["doc"] is True
    assert r["hook"] is True and r["sig"] is True and r["hookdoc"] is True
    assert r["traced"] == 1 and r["late"] == "plain"  # the tracer is not "the caller"
    assert r["thread"] == "compiled"


def test_after_deactivate_a_kept_reference_to_the_hook_is_torchs_own(tmp_path):
    _, r = run_py(
        NPU + "import npu_compat\n" + HELPERS + """
import torch._dynamo
import sglang.srt.layers.ops as ops
kept = torch._dynamo.optimize
npu_compat.deactivate()
n = len(core.compiles())
fn = kept(backend="eager")(ops.plain)
report.emit(kind=_wrappers.kind(fn), restored=torch._dynamo.optimize is not kept, audited=len(core.compiles()) - n)
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "all"},
    )
    assert r["kind"] == "compiled" and r["restored"] is True and r["audited"] == 0


def test_a_calls_guard_on_a_function_that_already_passes_disable_is_upstream_fixed(tmp_path):
    _, r = run_py(
        NPU + "import npu_compat\n" + HELPERS + """
import sglang.srt.layers.ops as ops
report.emit(states=report.all_states(), made=_wrappers.kind(ops.make_guarded()))
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": "sglang.srt.layers.ops:make_guarded,sglang.srt.layers.ops:make_late"},
    )
    assert r["states"]["eager:sglang.srt.layers.ops:make_guarded"] == "upstream-fixed"
    assert r["states"]["eager:sglang.srt.layers.ops:make_late"] == "applied"
    assert r["made"] == "plain"


class Holder:
    def method(self):
        import sys

        return sys._getframe(0)


def test_frame_qualname_without_co_qualname_finds_the_method():
    from npu_compat import intercept

    frame = Holder().method()
    # Python 3.10: no co_qualname; the method is found through the module's classes
    assert intercept.qualname_of(frame.f_code, frame.f_globals, None) == "Holder.method"
    assert intercept.frame_qualname(frame) == "Holder.method"


@pytest.mark.parametrize(
    "value, mode, names, warned",
    [
        ("all,ernie-vl-rotary", "all", {"ernie-vl-rotary"}, False),
        ("all,", "all", set(), False),
        ("everything", "everything", set(), False),
        ("default,ernie-vl-rotary", None, {"ernie-vl-rotary"}, False),
        ("all,bogus", "all", set(), True),
    ],
)
def test_eager_setting_all_in_a_list(value, mode, names, warned):
    import logging

    from npu_compat import audit

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("npu_compat").addHandler(handler)
    try:
        s = audit.parse_eager(value, {"ernie-vl-rotary"}, ("sglang",))
    finally:
        logging.getLogger("npu_compat").removeHandler(handler)
    assert s.mode == mode and set(s.names) == names
    assert bool(records) is warned


# --- the audit agrees with the states --------------------------------------------------------


@pytest.mark.parametrize("route", ["early", "late"])
def test_a_site_a_record_made_eager_is_eager_in_the_audit_on_both_routes(tree, route):
    early = route == "early"
    _, r = run_py(
        NPU + ("import npu_compat\n" if early else "")
        + "import sglang.srt.managers.overlap_utils as m\n"
        + ("" if early else "from npu_compat import plugin; plugin.load()\n")
        + HELPERS + """
report.emit(compiles=core.compiles(), states=report.states())
""",
        tree=tree("prefix"),
    )
    assert set(r["states"].values()) == {"applied"}
    by = {c["target"].rsplit(".", 1)[-1]: c for c in r["compiles"]}
    for helper in ("_assert_nonneg_and_invalidate", "_gather_spec_extras"):
        assert by[helper]["eager"] is True and by[helper]["eager_by"] == "record", by


def test_report_line_carries_the_fallback(tmp_path):
    out = tmp_path / "r.jsonl"
    run_py(
        NPU + "import npu_compat\n" + HELPERS + """
import sglang.srt.layers.ops as ops
ops.scale(torch.ones(2))
report.emit(ok=True)
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_REPORT": str(out)},
    )
    line = json.loads(out.read_text().splitlines()[-1])
    scale = [c for c in line["compiles"] if c["site"] == "sglang.srt.layers.ops:scale"][0]
    assert scale["fell_back"]["stage"] == "compile" and scale["eager_by"] == "fallback"
    assert os.path.basename(scale["source"].split(":")[0]) == "ops.py"
