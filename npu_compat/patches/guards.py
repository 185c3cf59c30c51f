"""Guards: upstream's NPU remedy, ``disable=is_npu()``, for compiled sites of released sglang.

Each record names one site that NPU execution reaches, with the call path
that reaches it (``evidence``) and the upstream pull request that fixed a
sibling site the same way.  See docs/guards.md.
"""

from npu_compat.registry import Guard

PATCHES = ()
