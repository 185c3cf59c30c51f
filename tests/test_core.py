"""The import hook on every upstream state, on a simulated NPU and off it.

Each case runs in a fresh interpreter: the simulated NPU and the import
system state are process-wide.
"""

import pytest
from conftest import run_py

NPU = "from support import fake_npu; fake_npu.install()\n"


def test_npu_prefix_hook_before_import_applies_and_compiles_nothing(tree):
    # npu_compat first, target second (the usual `import npu_compat` before launch).
    _, r = run_py(
        NPU
        + """
import logging, torch
logging.basicConfig(level=logging.INFO)
import npu_compat
import torch._dynamo.utils as du
import sglang.srt.managers.overlap_utils as m
from support import report
fm = m.FutureMap(64, 4, 16, debug_assert=True)
idx = torch.tensor([3, 5, 5, 9])
fm.store_spec_extras(idx, torch.rand(4, 4), torch.randint(0, 100, (4, 4)), torch.tensor([7, 8, 8, 9]),
                     torch.rand(4, 16).to(torch.bfloat16))
p, i, t, h = fm._resolve_spec_extras(idx)
ok = (torch.equal(p, fm.topk_p_buf[idx]) and torch.equal(i, fm.topk_index_buf[idx])
      and torch.equal(t, torch.tensor([7, 8, 8, 9])) and torch.equal(h, fm.hidden_states_buf[idx]))
invalidated = fm.output_tokens_buf[idx].tolist()
try:
    fm._resolve_spec_extras(idx)  # slots were reset to -1: the assert trips
    tripped = None
except RuntimeError as exc:
    tripped = type(exc).__name__
report.emit(helpers=report.describe(m), states=report.states(), frames=report.frames(),
            ok=ok, invalidated=invalidated, tripped=tripped, wrapped=[hasattr(getattr(m, n), "__wrapped__") for n in report.HELPERS])
""",
        tree=tree("prefix"),
    )
    assert r["helpers"] == {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "ours"}
    assert r["states"] == {"overlap-assert-nonneg": "applied", "overlap-gather-spec-extras": "applied"}
    assert r["wrapped"] == [False, False]  # no dynamo wrapper: the plain function
    assert r["frames"] == 0  # calling through the upstream caller compiled nothing
    assert r["ok"] is True
    assert r["invalidated"] == [-1, -1, -1, -1]
    assert r["tripped"] == "RuntimeError"


def test_npu_prefix_target_imported_first_then_npu_compat(tree):
    proc, r = run_py(
        NPU
        + """
import logging
logging.basicConfig(level=logging.INFO)
import sglang.srt.managers.overlap_utils as m
from support import report
before = report.describe(m)
import npu_compat
import npu_compat  # twice: nothing more happens
npu_compat.activate(); npu_compat.activate()
report.emit(before=before, after=report.describe(m), states=report.states())
""",
        tree=tree("prefix"),
    )
    assert r["before"] == {"_assert_nonneg_and_invalidate": "compiled", "_gather_spec_extras": "compiled"}
    assert r["after"] == {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "ours"}
    assert set(r["states"].values()) == {"applied"}
    # one INFO decision line per helper, naming it and the upstream PR, however often activated
    info = [line for line in proc.stderr.splitlines() if line.startswith("INFO:npu_compat")]
    applied = [line for line in info if ": applied: " in line]
    assert len(applied) == 2, proc.stderr
    assert all("PR #26403" in line for line in applied)
    assert any("_gather_spec_extras" in line for line in applied)
    assert sum(": active in this process" in line for line in info) == 1, proc.stderr


@pytest.mark.parametrize("order", ["npu_compat-first", "target-first"])
def test_off_npu_every_attribute_is_upstreams_own(tree, order):
    # On CPU the module must keep every object it created, whichever comes first.
    _, r = run_py(
        """
import sys
order = sys.argv[1]
if order == "npu_compat-first":
    import npu_compat
import sglang.srt.managers.overlap_utils as m
snapshot = dict(vars(m))
import npu_compat
from support import report
same = [k for k, v in vars(m).items() if snapshot.get(k) is v]
origins = {n: getattr(m, n)._torchdynamo_orig_callable.__code__.co_filename == m.__file__ for n in report.HELPERS}
report.emit(changed=sorted(set(vars(m)) ^ set(same)), origins=origins, states=report.states(),
            reasons=[s.reason for s in npu_compat.status()])
""",
        tree=tree("prefix"),
        args=[order],
    )
    assert r["changed"] == []
    assert r["origins"] == {"_assert_nonneg_and_invalidate": True, "_gather_spec_extras": True}
    assert set(r["states"].values()) == {"not-needed"}
    assert "not on NPU" in r["reasons"][0]


@pytest.mark.parametrize(
    "variant, helpers, states",
    [
        ("fixed", {"_assert_nonneg_and_invalidate": "plain", "_gather_spec_extras": "plain"},
         {"overlap-assert-nonneg": "upstream-fixed", "overlap-gather-spec-extras": "upstream-fixed"}),
        ("refactored", {"_assert_nonneg_and_invalidate": "plain", "_gather_spec_extras": "absent"},
         {"overlap-assert-nonneg": "upstream-fixed", "overlap-gather-spec-extras": "absent"}),
        ("absent", {"_assert_nonneg_and_invalidate": "absent", "_gather_spec_extras": "absent"},
         {"overlap-assert-nonneg": "absent", "overlap-gather-spec-extras": "absent"}),
        ("changed_signature", {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "compiled"},
         {"overlap-assert-nonneg": "applied", "overlap-gather-spec-extras": "incompatible"}),
    ],
)  # fmt: skip
def test_npu_other_upstream_states(tree, variant, helpers, states):
    proc, r = run_py(
        NPU
        + """
import npu_compat
import sglang.srt.managers.overlap_utils as m
snapshot = dict(vars(m))
from support import report
report.emit(helpers=report.describe(m), states=report.states(),
            reasons={s.name: s.reason for s in npu_compat.status()})
""",
        tree=tree(variant),
    )
    assert r["helpers"] == helpers
    assert r["states"] == states
    warnings = [line for line in proc.stderr.splitlines() if "incompatible" in line]
    if variant == "changed_signature":
        # one WARNING naming the function and both signatures
        assert len(warnings) == 1, proc.stderr
        assert "_gather_spec_extras(indices, topk_p_buf, topk_index_buf, output_tokens_buf, hidden_states_buf)" in warnings[0]
        assert "_gather_spec_extras(indices, bufs)" in warnings[0]
    else:
        assert warnings == []


STRICT_IMPORT = """
import npu_compat
from support import report
try:
    import sglang.srt.managers.overlap_utils
    err = None
except npu_compat.NpuCompatError as exc:
    err = str(exc)
report.emit(err=err)
"""


def test_strict_turns_incompatible_into_a_clear_error(tree):
    _, r = run_py(
        NPU + STRICT_IMPORT,
        tree=tree("changed_signature"),
        env={"NPU_COMPAT_STRICT": "1"},
    )
    assert r["err"] is not None
    assert "_gather_spec_extras" in r["err"] and "NPU_COMPAT_STRICT=1" in r["err"]


def test_strict_errors_name_the_value_that_turned_it_on(tree):
    _, r = run_py(
        NPU + STRICT_IMPORT,
        tree=tree("changed_signature"),
        env={"NPU_COMPAT_STRICT": " true"},
    )
    assert r["err"] is not None and r["err"].endswith("(NPU_COMPAT_STRICT=true)"), r["err"]


def test_a_mistyped_strict_value_warns_when_npu_compat_arms(tree):
    # Before, NPU_COMPAT_STRICT=maybe was read only when a patch failed: a CI with the typo stayed green.
    proc, r = run_py(
        "import npu_compat\nimport sglang.srt.managers.overlap_utils\nfrom support import report\n"
        "report.emit(states=report.states())\n",
        tree=tree("prefix"),
        env={"NPU_COMPAT_STRICT": "maybe", "NPU_COMPAT_DEVICE": "cpu"},
    )
    assert set(r["states"].values()) == {"not-needed"}
    assert proc.stderr.splitlines() == [
        "NPU_COMPAT_STRICT='maybe' is not understood (use 1 or 0); treating it as 0"
    ], proc.stderr


def test_target_import_error_reaches_the_importer_unchanged(tree):
    code = """
import sys
if sys.argv[1] == "with":
    import npu_compat
from support import report
try:
    import sglang.srt.managers.overlap_utils
except BaseException as exc:
    report.emit(type=type(exc).__name__, msg=str(exc), cause=repr(exc.__cause__), context=repr(exc.__context__),
                in_modules="sglang.srt.managers.overlap_utils" in sys.modules)
"""
    _, without = run_py(NPU + code, tree=tree("raising"), args=["without"])
    _, with_ = run_py(NPU + code, tree=tree("raising"), args=["with"])
    assert with_ == without
    assert with_["type"] == "RuntimeError" and "fixture" in with_["msg"]


def test_disabled_does_nothing(tree):
    _, r = run_py(
        NPU
        + """
import os, sys
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
report.emit(active=npu_compat.is_active(), helpers=report.describe(m), states=report.states(),
            wrapt="wrapt" in sys.modules, pythonpath=os.environ.get("PYTHONPATH"))
""",
        tree=tree("prefix"),
        env={"NPU_COMPAT_DISABLE": "1"},
    )
    assert r["active"] is False
    assert r["helpers"] == {"_assert_nonneg_and_invalidate": "compiled", "_gather_spec_extras": "compiled"}
    assert set(r["states"].values()) == {"disabled"}
    assert r["wrapt"] is False
    assert "bootstrap" not in r["pythonpath"]


def test_disable_one_patch_by_name(tree):
    proc, r = run_py(
        NPU
        + """
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
report.emit(helpers=report.describe(m), states=report.states())
""",
        tree=tree("prefix"),
        env={"NPU_COMPAT_DISABLE": "overlap-gather-spec-extras, no-such-patch"},
    )
    assert r["helpers"] == {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "compiled"}
    assert r["states"]["overlap-gather-spec-extras"] == "disabled"
    assert proc.stderr.count("no-such-patch") == 1  # one WARNING for the unknown name


@pytest.mark.parametrize(
    "setting, fake, expected, warned",
    [
        ("npu", False, "ours", False),  # forced NPU on a CPU machine
        ("cpu", True, "compiled", False),  # forced off on a (simulated) NPU
        ("  CUDA ", True, "compiled", False),
        ("auto", True, "ours", False),
        ("tpu-x", True, "ours", True),  # unknown: one WARNING, then detection
        ("tpu-x", False, "compiled", True),
    ],
)
def test_npu_compat_device_setting(tree, setting, fake, expected, warned):
    proc, r = run_py(
        ("from support import fake_npu; fake_npu.install()\n" if fake else "")
        + """
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
npu_compat.status(); npu_compat.is_npu()
report.emit(helpers=report.describe(m), npu=npu_compat.is_npu())
""",
        tree=tree("prefix"),
        env={"NPU_COMPAT_DEVICE": setting},
    )
    assert set(r["helpers"].values()) == {expected}
    assert proc.stderr.count("NPU_COMPAT_DEVICE") == (1 if warned else 0), proc.stderr


def test_deactivate_restores_and_activate_again_works(tree):
    _, r = run_py(
        NPU
        + """
import sys
import sglang.srt.managers.overlap_utils as m
from support import report
originals = {n: getattr(m, n) for n in report.HELPERS}
import npu_compat
seq = [report.describe(m)]
npu_compat.deactivate()
seq.append(report.describe(m))
restored = all(getattr(m, n) is originals[n] for n in report.HELPERS)
# the hook is gone: a fresh import of the target is left alone
del sys.modules["sglang.srt.managers.overlap_utils"]
import sglang.srt.managers.overlap_utils as m2
seq.append(report.describe(m2))
npu_compat.activate()
seq.append(report.describe(m2))
report.emit(seq=seq, restored=restored, states=report.states())
""",
        tree=tree("prefix"),
    )
    ours = {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "ours"}
    compiled = {"_assert_nonneg_and_invalidate": "compiled", "_gather_spec_extras": "compiled"}
    assert r["seq"] == [ours, compiled, compiled, ours]
    assert r["restored"] is True
    assert set(r["states"].values()) == {"applied"}


def test_is_npu_never_raises():
    _, r = run_py(
        """
import sys
from support import fake_npu, report
import npu_compat
from npu_compat import device
out = {}
fake = fake_npu.install(raises=RuntimeError("no device visible"))
out["raises"] = device.detect()
device.reset()
fake._raises, fake._available = None, False
out["unavailable"] = device.detect()
report.emit(**out)
"""
    )
    assert r["raises"][0] is False and "RuntimeError" in r["raises"][1]
    assert r["unavailable"][0] is False and "is_available() is False" in r["unavailable"][1]


def test_status_without_torch_and_without_sglang():
    # torch cannot be imported at all (as where torch_npu's autoload fails).
    proc, r = run_py(
        """
import sys, io, contextlib, json
sys.modules["torch"] = None
from support import report
import npu_compat
from npu_compat.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main(["status", "--json"])
rep = json.loads(buf.getvalue())
report.emit(rc=rc, device=rep["device"], states=[p["state"] for p in rep["patches"]])
"""
    )
    assert r["rc"] == 0
    # torch_npu is not installed: that alone answers "not NPU", without trying torch
    assert r["device"]["npu"] is False and r["device"]["reason"] == "torch_npu is not installed"
    assert set(r["states"]) == {"not-installed"} and len(r["states"]) >= 2
