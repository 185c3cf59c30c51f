"""Is this process on an Ascend NPU?  Answered once, lazily, and never by raising.

torch_npu registers torch's ``privateuse1`` backend as ``npu`` and a device
module ``torch.npu``; recent torch autoloads it on ``import torch``.  sglang's
own ``is_npu()`` raises when torch_npu is present but no device is visible;
here that case is simply "not an NPU", with the reason kept for ``status``.
"""

import os
import sys

from npu_compat import _env

_cache = None  # (is_npu, reason)
_NO_MODULE = "torch has no 'npu' device module"
_NOT_LOADED = "torch_npu is installed but not loaded"
_TRANSIENT = (_NO_MODULE, _NOT_LOADED)


DEV_DIR = "/dev"  # where the Ascend driver puts its device files (a test points it elsewhere)


def torch_npu_installed():
    """Whether ``torch_npu`` can be found on sys.path (looked up, never imported)."""
    from importlib.machinery import PathFinder  # finds without importing

    try:
        return PathFinder.find_spec("torch_npu") is not None
    except Exception:
        return False


_torch_npu_installed = torch_npu_installed


def device_files():
    """The Ascend chips' device files: ``/dev/davinci<N>``, sorted by N (the driver makes one per chip
    visible to this container, beside ``/dev/davinci_manager``)."""
    try:
        names = os.listdir(DEV_DIR)
    except OSError:
        return []
    chips = [n for n in names if n.startswith("davinci") and n[7:].isdigit()]
    return [os.path.join(DEV_DIR, n) for n in sorted(chips, key=lambda n: int(n[7:]))]


def evidence(ignore_setting=False):
    """``(is_npu, reason)`` without importing torch, torch_npu or anything else.

    It rests on three things: NPU_COMPAT_DEVICE (unless ``ignore_setting``);
    whether torch_npu is installed (a path lookup); and the Ascend driver's
    device files ``/dev/davinci<N>``.  torch_npu installed and at least one
    such file present reads as an NPU; that the chip works (CANN, driver
    version, a chip held by another container) only
    ``torch.npu.is_available()`` can tell, which :func:`detect` asks.  When
    torch is already imported the real answer costs nothing: it is given.
    """
    if not ignore_setting:
        forced = _env.device()
        if forced == "npu":
            return True, "forced by NPU_COMPAT_DEVICE=npu"
        if forced.startswith("other:"):
            return False, f"forced by NPU_COMPAT_DEVICE={forced[6:]}"
        if sys.modules.get("torch") is not None:
            return detect()
    if not torch_npu_installed():
        return False, "torch_npu is not installed"
    files = device_files()
    if not files:
        return False, f"torch_npu is installed, but no Ascend device file ({DEV_DIR}/davinci<N>) is present"
    shown = files[0] if len(files) == 1 else f"{files[0]} .. {os.path.basename(files[-1])}"
    return True, (
        f"torch_npu is installed and {len(files)} Ascend device file{'s' if len(files) != 1 else ''} "
        f"({shown}) present; not confirmed by torch.npu.is_available()"
    )


def _detect():
    forced = _env.device()
    if forced == "npu":
        return True, "forced by NPU_COMPAT_DEVICE=npu"
    if forced.startswith("other:"):
        return False, f"forced by NPU_COMPAT_DEVICE={forced[6:]}"
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except BaseException as exc:  # torch_npu's autoload raises RuntimeError without CANN
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return False, f"torch cannot be imported ({type(exc).__name__}: {str(exc)[:200]})"
    try:
        npu = getattr(torch, "npu", None)
    except Exception as exc:
        return False, f"reading torch.npu raised {type(exc).__name__}: {exc}"
    if npu is None:
        if _torch_npu_installed():
            return False, f"{_NOT_LOADED}: torch has no 'npu' device module"
        return False, f"{_NO_MODULE} (torch_npu is not installed)"
    try:
        available = bool(npu.is_available())
    except Exception as exc:
        return False, f"torch.npu.is_available() raised {type(exc).__name__}: {exc}"
    if not available:
        return False, "torch.npu exists but torch.npu.is_available() is False (no NPU visible)"
    return True, "torch.npu.is_available() is True"


def detect():
    """Return ``(is_npu, reason)``; computed on first use and cached.

    "torch has no npu module yet" is not cached: torch_npu may still be
    imported later (torch < 2.5 does not autoload it).
    """
    global _cache
    if _cache is not None:
        return _cache
    result = _detect()
    if not result[1].startswith(_TRANSIENT):
        _cache = result
    return result


def is_npu():
    """True when this process runs on an Ascend NPU (see :func:`detect`). Never raises."""
    try:
        return detect()[0]
    except Exception:
        return False


def decided_not_npu():
    """True only when the answer is known to be "not an NPU" (forced, or detected for good)."""
    try:
        if _env.device().startswith("other:"):
            return True
    except Exception:
        return False
    return _cache is not None and not _cache[0]


def reset():
    """Forget the cached answer (tests; after changing NPU_COMPAT_DEVICE)."""
    global _cache
    _cache = None
