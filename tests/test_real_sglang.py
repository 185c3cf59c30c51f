"""Against the real sglang from PyPI (0.5.13), not only the fixtures.

Needs an interpreter where ``sglang.srt.managers.overlap_utils`` imports:
NPU_COMPAT_SGLANG_PYTHON names it (scripts/make_sglang_venv.sh builds one;
.ci/run does), else this interpreter if sglang imports here.  Skipped
otherwise, with the reason.

sglang 0.5.13 ships the fixed module (``disable=_is_npu``) and no longer has
``_gather_spec_extras``.  The pre-fix state is recreated without touching the
venv: a finder serves a copy of the shipped file with ``disable=_is_npu``
removed, under the module's own name.
"""

import functools
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import RESULT, ROOT, TESTS, clean_env, run_python


@functools.lru_cache(maxsize=1)
def sglang_python():
    named = os.environ.get("NPU_COMPAT_SGLANG_PYTHON")
    candidates = [os.path.abspath(named) if named else None, sys.executable]
    for py in filter(None, candidates):
        # torch first (overlap_utils imports it anyway): forked from the zygote the tests use next
        probe = run_python(py, "import torch\nimport sglang.srt.managers.overlap_utils, npu_compat, wrapt", clean_env(),
                           timeout=300)
        if probe.returncode == 0:
            return py
    return None


needs_sglang = pytest.mark.skipif(
    "sglang_python() is None",
    reason="real sglang is not importable (set NPU_COMPAT_SGLANG_PYTHON; see scripts/make_sglang_venv.sh)",
)

PRE_FIX_OVERLAY = """
import importlib.abc, importlib.util, os, sys, tempfile
from importlib.machinery import PathFinder
_NAME = "sglang.srt.managers.overlap_utils"

class _PreFix(importlib.abc.MetaPathFinder):
    # Serve the shipped overlap_utils with the upstream fix (PR #26403) taken out.
    def find_spec(self, name, path=None, target=None):
        if name != _NAME:
            return None
        real = PathFinder.find_spec(name, path)
        src = open(real.origin).read()
        assert src.count("@torch.compile(dynamic=True, disable=_is_npu)") >= 1
        copy = os.path.join(tempfile.mkdtemp(), "overlap_utils.py")
        open(copy, "w").write(src.replace("@torch.compile(dynamic=True, disable=_is_npu)", "@torch.compile(dynamic=True)"))
        return importlib.util.spec_from_file_location(name, copy)

sys.meta_path.insert(0, _PreFix())
"""

NPU = "from support import fake_npu; fake_npu.install()\n"

CALLER = """
import types, torch
import torch._dynamo.utils as du
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
pool = types.SimpleNamespace(req_to_token=torch.zeros(8, 4, dtype=torch.int32))
fm = m.FutureMap(torch.device("cpu"), SpeculativeAlgorithm.NONE, pool)
idx = torch.tensor([1, 3])
fm.stash(idx, torch.tensor([11, 33]))
batch = types.SimpleNamespace(prefill_input_ids_cpu=None, input_ids=None, req_pool_indices=idx,
                              enable_overlap=False, is_spec_v2=False)
m.resolve_forward_inputs(batch, fm)  # the upstream caller, reading the module global
caller = {"input_ids": batch.input_ids.tolist(), "buf": fm.output_tokens_buf[idx].tolist()}
batch.input_ids = None
try:
    m.resolve_forward_inputs(batch, fm)  # the slots were consumed: the assert trips
    caller["tripped"] = None
except RuntimeError as exc:
    caller["tripped"] = "RuntimeError"
caller["frames"] = sum(du.counters["frames"].values())
"""

EMIT = """
import npu_compat
st = {s.name: (s.state, s.installed) for s in npu_compat.status()}
fn = getattr(m, "_assert_nonneg_and_invalidate")
from npu_compat.impl import overlap_utils as own
res = {"st": st, "ours": fn is own._assert_nonneg_and_invalidate, "compiled": hasattr(fn, "_torchdynamo_orig_callable"),
       "fn_module": fn.__module__, "has_gather": hasattr(m, "_gather_spec_extras"), "route": npu_compat.route(),
       "caller": globals().get("caller"), "loaded": globals().get("loaded"), "pre": globals().get("pre")}
print("RESULT:" + json.dumps(res))
"""


def run_real(code, env=None, timeout=600):
    py = sglang_python()
    env = clean_env(PYTHONPATH=os.pathsep.join([ROOT, TESTS]), SGLANG_IS_IN_CI="1", **(env or {}))
    proc = run_python(py, "import json\n" + code, env, timeout=timeout)  # forked where it may be (conftest)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    assert lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len(RESULT) :]), proc


@needs_sglang
def test_shipped_module_on_npu_is_upstream_fixed_and_untouched():
    r, _ = run_real(NPU + "import npu_compat\nimport sglang.srt.managers.overlap_utils as m\n" + EMIT)
    assert r["st"]["overlap-assert-nonneg"][0] == "upstream-fixed"
    assert r["st"]["overlap-gather-spec-extras"][0] == "absent"  # moved to a Triton kernel in 0.5.13
    assert r["ours"] is False and r["compiled"] is False
    assert r["fn_module"] == "sglang.srt.managers.overlap_utils"
    assert r["has_gather"] is False  # nothing injected


@needs_sglang
def test_pre_fix_state_on_npu_is_patched_and_compiles_nothing():
    r, _ = run_real(
        NPU + PRE_FIX_OVERLAY + "import npu_compat\nimport sglang.srt.managers.overlap_utils as m\n" + CALLER + EMIT
    )
    assert r["st"]["overlap-assert-nonneg"] == ["applied", "npu_compat"]
    assert r["ours"] is True
    assert r["caller"] == {"input_ids": [11, 33], "buf": [-1, -1], "tripped": "RuntimeError", "frames": 0}


@needs_sglang
def test_pre_fix_state_off_npu_keeps_upstreams_compiled_helper():
    r, _ = run_real(PRE_FIX_OVERLAY + "import npu_compat\nimport sglang.srt.managers.overlap_utils as m\n" + EMIT)
    assert r["st"]["overlap-assert-nonneg"][0] == "not-needed"
    assert r["ours"] is False and r["compiled"] is True


@needs_sglang
@pytest.mark.parametrize("allow", [None, "npu_compat", "someone_else"])
def test_sglangs_own_plugin_loader_activates_it_after_the_target_is_imported(allow):
    # As in a scheduler process: overlap_utils is imported first, then sglang loads its plugins.
    code = (
        NPU
        + PRE_FIX_OVERLAY
        + "import sglang.srt.managers.overlap_utils as m\n"
        + "from sglang.srt.plugins import load_plugins\nload_plugins()\nload_plugins()\n"
        + "loaded = 'npu_compat' in sys.modules\n"
        + "pre = 'compiled' if hasattr(m._assert_nonneg_and_invalidate, '_torchdynamo_orig_callable') else 'not'\n"
        + EMIT
    )
    env = {"SGLANG_PLUGINS": allow} if allow else {}
    r, _ = run_real(code, env=env)
    if allow == "someone_else":
        assert r["loaded"] is False  # sglang's allow-list kept it out: nothing imported it
        assert r["pre"] == "compiled"  # read before EMIT imports npu_compat to report
    else:
        assert r["loaded"] is True and r["route"] == "plugin"
        assert r["ours"] is True and r["st"]["overlap-assert-nonneg"][0] == "applied"


@needs_sglang
def test_scan_of_the_installed_sglang(capsys):
    py = sglang_python()
    t = time.perf_counter()
    proc = subprocess.run(
        [py, "-m", "npu_compat", "scan", "--package", "sglang", "--json"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    sites = rep["sites"]
    ours = [s for s in sites if s["path"].endswith("managers/overlap_utils.py")]
    assert [s["verdict"] for s in ours] == ["guarded"]  # the fixed helper of 0.5.13
    assert rep["summary"]["files_scanned"] > 1000
    with capsys.disabled():
        print(f"\nscan of sglang: {json.dumps(rep['summary'])} in {elapsed:.1f} s wall")
    assert elapsed < 60  # generous on a loaded CI machine; the note reports the quiet figure
