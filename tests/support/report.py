"""For child processes of the tests: describe the patched module, then print RESULT:<json>."""

import json
import sys

HELPERS = ("_assert_nonneg_and_invalidate", "_gather_spec_extras")


def describe(module):
    """What each helper of `module` is now: ours, upstream compiled, upstream plain, absent."""
    # Does not import npu_compat: that would activate it.
    impl = sys.modules.get("npu_compat.impl.overlap_utils")
    out = {}
    for name in HELPERS:
        obj = getattr(module, name, None)
        if obj is None:
            out[name] = "absent"
        elif impl is not None and obj is getattr(impl, name):
            out[name] = "ours"
        elif getattr(obj, "_torchdynamo_orig_callable", None) is not None:
            out[name] = "compiled"
        else:
            out[name] = "plain"
    return out


def states():
    """The overlap_utils patches' states (the records these fixture trees are about)."""
    import npu_compat

    return {s.name: s.state for s in npu_compat.status() if s.module == "sglang.srt.managers.overlap_utils"}


def all_states():
    import npu_compat

    return {s.name: s.state for s in npu_compat.status()}


def frames():
    import torch._dynamo.utils as u

    return sum(u.counters["frames"].values())


def emit(**data):
    sys.stdout.write("RESULT:" + json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
