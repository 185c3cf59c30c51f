"""The import hook under every way Python imports, reloads, forks: issue 12's cases.

Each case runs in its own interpreter over a small fixture tree; each failed
against the hook as it was before (see the issue's note for the run).
"""

import os

import pytest
from conftest import run_py

FORCED = {"NPU_COMPAT_DEVICE": "npu"}
LIGHT_OVERLAP = "sglang/srt/managers/overlap_utils.py"


def _edit(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# --- 1. lock order when arming ---------------------------------------------------------


def test_arming_inside_a_slow_sglang_init_never_breaks_another_threads_import(tree):
    # Thread A imports sglang (slow __init__); thread B imports overlap_utils
    # (which does `from sglang import X`) as soon as sglang is in sys.modules.
    # Arming used to wait on overlap_utils' lock while holding sglang's: B got
    # "cannot import name ... from partially initialized module".
    root = tree("light")
    _edit(root, "sglang/__init__.py", "import time\ntime.sleep(0.4)\nX = 1\n")
    with open(os.path.join(root, LIGHT_OVERLAP)) as f:
        light = f.read()
    _edit(root, LIGHT_OVERLAP, "from sglang import X\n" + light)
    _, r = run_py(
        """
import sys, threading, time
import npu_compat
errors = []
def a():
    try:
        import sglang
    except BaseException as e:
        errors.append("A " + repr(e))
def b():
    while "sglang" not in sys.modules:
        time.sleep(0.0005)
    try:
        import sglang.srt.managers.overlap_utils
    except BaseException as e:
        errors.append("B " + repr(e))
ts = [threading.Thread(target=a), threading.Thread(target=b)]
[t.start() for t in ts]; [t.join(20) for t in ts]
from npu_compat import core
core.settle(10)
from support import report
report.emit(errors=errors, alive=[t.is_alive() for t in ts], states=report.states(),
            helpers=report.describe(sys.modules["sglang.srt.managers.overlap_utils"]))
""",
        tree=root,
        env=FORCED,
    )
    assert r["alive"] == [False, False]
    assert r["errors"] == []
    assert set(r["states"].values()) == {"applied"}
    assert set(r["helpers"].values()) == {"ours"}


# --- 2. a patch applies at every execution of the module ----------------------------------


@pytest.mark.parametrize("how", ["reload", "reimport"])
def test_reload_and_reimport_are_patched_again(tree, how):
    again = (
        "importlib.reload(m)"
        if how == "reload"
        else "del sys.modules['sglang.srt.managers.overlap_utils']\nm = importlib.import_module('sglang.srt.managers.overlap_utils')"
    )
    _, r = run_py(
        f"""
import importlib, sys
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
first = report.describe(m)
{again}
report.emit(first=first, again=report.describe(m), states=report.states())
""",
        tree=tree("light"),
        env=FORCED,
    )
    assert set(r["first"].values()) == {"ours"}
    assert set(r["again"].values()) == {"ours"}
    assert set(r["states"].values()) == {"applied"}


def test_strict_mode_is_not_defeated_by_a_second_import(tree):
    _, r = run_py(
        """
import importlib, sys
import npu_compat
outcomes = []
for _ in range(2):
    try:
        importlib.import_module("sglang.srt.managers.overlap_utils")
        outcomes.append("imported")
    except npu_compat.NpuCompatError as e:
        outcomes.append("NpuCompatError")
    sys.modules.pop("sglang.srt.managers.overlap_utils", None)
from support import report
report.emit(outcomes=outcomes)
""",
        tree=tree("changed_signature"),
        env=dict(FORCED, NPU_COMPAT_STRICT="1"),
    )
    assert r["outcomes"] == ["NpuCompatError", "NpuCompatError"]


# --- 4. status of a shell that is not set up -----------------------------------------------


def test_status_of_a_plain_shell_does_not_claim_activation(tree):
    _, r = run_py(
        """
import json, subprocess, sys
from support import report
def st(env):
    out = subprocess.run([sys.executable, "-m", "npu_compat", "status", "--json", "--no-import"],
                         capture_output=True, text=True, env=env).stdout
    d = json.loads(out)
    return [d["route"], d["children_inherit"]]
import os
plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
plain["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the fixture tree and tests, no bootstrap
import npu_compat
boot = dict(plain, PYTHONPATH=npu_compat.BOOTSTRAP_DIR + os.pathsep + plain["PYTHONPATH"])
report.emit(plain=st(plain), boot=st(boot))
""",
        tree=tree("light"),
    )
    assert r["plain"] == [None, False]
    assert r["boot"] == ["sitecustomize", True]


# --- 5. armed whatever the loaders ----------------------------------------------------------


def test_namespace_parents_still_patched(tree):
    root = tree("light")
    for rel in ("sglang/__init__.py", "sglang/srt/__init__.py", "sglang/srt/managers/__init__.py"):
        os.remove(os.path.join(root, rel))
    _, r = run_py(
        """
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
report.emit(helpers=report.describe(m), states=report.states())
""",
        tree=root,
        env=FORCED,
    )
    assert set(r["helpers"].values()) == {"ours"}
    assert set(r["states"].values()) == {"applied"}


def test_a_loader_with_only_load_module_still_arms(tree):
    _, r = run_py(
        """
import importlib.abc, importlib.util, sys, types, warnings
warnings.simplefilter("ignore", ImportWarning)
from importlib.machinery import PathFinder
class OldLoader:
    # the pre-PEP 451 protocol: load_module only
    def __init__(self, spec): self.spec = spec
    def load_module(self, name):
        mod = importlib.util.module_from_spec(self.spec)
        sys.modules[name] = mod
        self.spec.loader.exec_module(mod)
        return mod
class OldFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "sglang":
            return None
        real = PathFinder.find_spec(name, path)
        if real is None:
            return None
        pkg = real.submodule_search_locations is not None
        spec = importlib.util.spec_from_loader(name, OldLoader(real), origin=real.origin, is_package=pkg)
        if pkg:
            spec.submodule_search_locations = real.submodule_search_locations
        return spec
sys.meta_path.insert(0, OldFinder())  # every sglang module, as zipimport on Python 3.9 would
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
report.emit(helpers=report.describe(m), states=report.states())
""",
        tree=tree("light"),
        env=FORCED,
    )
    assert set(r["helpers"].values()) == {"ours"}
    assert set(r["states"].values()) == {"applied"}


# --- 9. design risks ---------------------------------------------------------------------------


def test_fork_while_another_thread_holds_the_lock_leaves_the_child_usable(tree):
    _, r = run_py(
        """
import os, threading, time
import npu_compat
held = threading.Event()
def hold():
    with npu_compat._state.lock:
        held.set()
        time.sleep(3)
threading.Thread(target=hold, daemon=True).start()
held.wait(5)
pid = os.fork()
if pid == 0:
    npu_compat.deactivate(); npu_compat.activate()
    os._exit(0)
deadline = time.monotonic() + 2.5  # the holder keeps the parent's lock longer than this
code = None
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        break
    time.sleep(0.01)
if code is None:
    os.kill(pid, 9); os.waitpid(pid, 0)
from support import report
report.emit(code=code)
""",
        tree=tree("light"),
    )
    assert r["code"] == 0  # None: the child hung on a lock held by a thread that does not exist in it


def test_plugin_route_writes_no_environment(tree):
    _, r = run_py(
        """
import os
before = dict(os.environ)
from importlib.metadata import entry_points
[ep] = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "npu_compat"]
ep.load()()   # as sglang's load_plugins() does
import npu_compat
from support import report
report.emit(same=dict(os.environ) == before, route=npu_compat.route(), active=npu_compat.is_active())
""",
        tree=tree("light"),
    )
    assert r == {"same": True, "route": "plugin", "active": True}


def test_a_wrapper_without_torch_markers_is_still_replaced(tree):
    # An NPU torch build whose compile wrapper lacks _torchdynamo_orig_callable:
    # only a provably plain function counts as upstream-fixed.
    root = tree("light")
    with open(os.path.join(root, LIGHT_OVERLAP)) as f:
        text = f.read()
    _edit(root, LIGHT_OVERLAP, text.replace("    wrapper._torchdynamo_orig_callable = fn\n", ""))
    _, r = run_py(
        """
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
report.emit(helpers=report.describe(m), states=report.states())
""",
        tree=root,
        env=FORCED,
    )
    assert set(r["states"].values()) == {"applied"}
    assert set(r["helpers"].values()) == {"ours"}
