"""Patch record modules: one per upstream fix, listed in ``npu_compat.registry.PATCH_MODULES``.

Record modules hold data only (no torch import): ``status`` reads them in
processes that may have no torch at all.  The code a record installs lives in
``npu_compat.impl`` and is imported only when a patch is applied.
"""
