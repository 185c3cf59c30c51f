"""The walk over loaded sglang modules: odd entries are skipped one by one, and early bindings are rewired.

Each case runs in its own interpreter on the simulated NPU, with the
fixture tree of test_guards (a compiled ``rope``, bound again by name and as
class attributes in ``user``).
"""

import textwrap

from conftest import record_cases, run_py
from test_guards import NPU, make_tree

SITE = "sglang.srt.layers.rope:rope"

# Things a package may leave under its name in sys.modules, or among a
# module's globals, that the walk must step over without reading them.
ODD = """
import sys, types
touched = []

class Meta(type):
    def __getattribute__(cls, name):
        touched.append(("Meta", name))
        raise RuntimeError("metaclass __getattribute__ called for " + name)

class Weird(metaclass=Meta):
    pass

class NoName:  # a config object, no __name__
    def __getattr__(self, name):
        touched.append(("NoName", name))
        raise AttributeError(name)

class BadDict:
    @property
    def __dict__(self):
        touched.append(("BadDict", "__dict__"))
        raise RuntimeError("__dict__ is not a dict")

class Unhashable(str):
    def __hash__(self):
        touched.append(("Unhashable", "__hash__"))
        raise RuntimeError("no hash")
    def __eq__(self, other):
        touched.append(("Unhashable", "__eq__"))
        raise RuntimeError("no eq")

odd_mod = types.ModuleType("sglang.srt.odd_named")
odd_mod.__name__ = Unhashable("sglang.srt.odd_named")  # a __name__ whose hash raises
odd_cls = types.new_class("OddOwner")
odd_cls.__module__ = Unhashable("sglang.srt.layers.user")  # a __module__ whose eq/hash raise
import sglang.srt.layers.user as user_mod
user_mod.Weird = Weird
user_mod.OddOwner = odd_cls
sys.modules["sglang.srt.config_obj"] = NoName()
sys.modules["sglang.srt.bad_dict"] = BadDict()
sys.modules["sglang.srt.odd_named"] = odd_mod
sys.modules[("sglang", "tuple key")] = types.ModuleType("t")
"""


def test_odd_entries_are_skipped_one_by_one_and_the_late_walk_still_rewires(tmp_path):
    _, r = run_py(
        NPU + """
import sglang.srt.layers.user, sglang.srt.layers.rope as rope_mod
""" + ODD + """
import npu_compat
from npu_compat import core, plugin, _wrappers
plugin.load()
from support import report
report.emit(user=_wrappers.kind(vars(user_mod)["rope"]), direct=_wrappers.kind(vars(user_mod.Layer)["direct"]),
            kernel=_wrappers.kind(vars(user_mod.Layer)["kernel"].__func__), walk=core._state.walk_ms,
            touched=touched, states=report.all_states(), found=sorted(c["where"] for c in core.compiles()))
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_EAGER": SITE},
    )
    proc = _
    assert r["states"]["eager:" + SITE] == "applied"
    assert (r["user"], r["direct"], r["kernel"]) == ("plain", "plain", "plain")  # every binding rewired
    assert r["walk"] is not None  # the late walk ran to the end
    assert r["touched"] == []  # nothing foreign was asked for an attribute, a hash or an equality
    assert any(w.startswith("sglang.srt.layers.rope:Rotary") for w in r["found"]), r["found"]
    assert "WARNING" not in proc.stderr and "failed" not in proc.stderr, proc.stderr
    record_cases("late walk: odd sys.modules entries and classes skipped one by one", 6)


# A registry guard (rotary-apply-native): compiled where it is defined, swapped
# by the post-import hook (NPU_COMPAT_EAGER's own sites are made eager at
# definition by the torch.compile hook instead, which needs no rewiring).
BOTTOM = '''
import torch

@torch.compile(dynamic=True)
def apply_rotary_pos_emb_native(q, k, cos, sin, unsqueeze_dim=1):
    return q * cos + k * sin

# The usual way out of an import cycle: an import at the bottom, which binds
# the function elsewhere before this module's post-import hook runs.
import sglang.srt.layers.rotary_embedding.late_user  # noqa: E402
'''

LATE_USER = '''
from sglang.srt.layers.rotary_embedding.utils import apply_rotary_pos_emb_native

class Holder:
    kernel = staticmethod(apply_rotary_pos_emb_native)
'''


def _bottom_bound_tree(tmp_path):
    """A fixture tree whose rotary utils binds the guarded function elsewhere from its last line."""
    root = make_tree(tmp_path)
    pkg = tmp_path / "tree" / "sglang" / "srt" / "layers" / "rotary_embedding"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "utils.py").write_text(textwrap.dedent(BOTTOM))
    (pkg / "late_user.py").write_text(textwrap.dedent(LATE_USER))
    return root


def test_a_binding_made_while_the_guarded_module_executed_is_rewired(tmp_path):
    root = _bottom_bound_tree(tmp_path)
    _, r = run_py(
        NPU + """
import npu_compat
import sglang.srt.layers.rotary_embedding.utils as utils
import sglang.srt.layers.rotary_embedding.late_user as late
from npu_compat import _wrappers
from support import report
name = "apply_rotary_pos_emb_native"
report.emit(site=_wrappers.kind(vars(utils)[name]), late=_wrappers.kind(vars(late)[name]),
            same=vars(late)[name] is vars(utils)[name],
            kernel=_wrappers.kind(vars(late.Holder)["kernel"].__func__), states=report.all_states())
""",
        tree=root,
    )
    assert r["states"]["rotary-apply-native"] == "applied"
    assert r["site"] == "plain" and r["late"] == "plain" and r["same"] is True
    assert r["kernel"] == "plain"
    record_cases("early activation: bindings made while the guarded module executed", 1)


def test_records_decided_before_torch_npu_loaded_are_decided_again_on_npu(tmp_path):
    # torch < 2.5 or TORCH_DEVICE_BACKEND_AUTOLOAD=0: torch_npu is imported
    # after sglang's modules; they were decided not-needed then.
    root = _bottom_bound_tree(tmp_path)
    (tmp_path / "tree" / "torch_npu").mkdir()
    (tmp_path / "tree" / "torch_npu" / "__init__.py").write_text("from support import fake_npu\nfake_npu.install()\n")
    _, r = run_py(
        """
import torch, npu_compat
import sglang.srt.layers.rotary_embedding.utils as utils
import sglang.srt.layers.rotary_embedding.late_user as late
from npu_compat import _wrappers
from support import report
name = "apply_rotary_pos_emb_native"
before = report.all_states()["rotary-apply-native"]
import torch_npu
report.emit(before=before, after=report.all_states()["rotary-apply-native"], site=_wrappers.kind(vars(utils)[name]),
            late=_wrappers.kind(vars(late)[name]), kernel=_wrappers.kind(vars(late.Holder)["kernel"].__func__),
            npu=npu_compat.is_npu())
""",
        tree=root,
    )
    assert r["before"] == "not-needed" and r["npu"] is True
    assert r["after"] == "applied"
    assert (r["site"], r["late"], r["kernel"]) == ("plain", "plain", "plain")
    record_cases("torch_npu loaded late: not-needed decided again", 1)
