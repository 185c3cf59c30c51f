"""Which names and expressions are device checks, and what they are on NPU.

A name is an NPU check when it *is* one: sglang's ``is_npu`` (followed to
its definition when sglang is in the scan), ``torch.npu.is_available()``,
``hasattr(torch, "npu")``, a comparison with the string ``"npu"``.  Only a
name that cannot be followed is judged by its spelling, and then strictly
(the whole name is the device, give or take ``is_``/``_available``:
``_is_npu``, ``is_cuda_alike``; never ``enable_torchair_compile`` or
``npu_graph_bs``); a verdict that rests on such a guess says so.
"""

import re

# Truth of an expression on an NPU machine; where a backend= sends NPU.
T, F, FLAG, UNK = "true", "false", "flag", "unknown"
NPU_ROUTE, SAME, BUNK = "npu", "same", "unknown"
GUESS = "naming guess"  # marks a note whose verdict rests on a name's spelling

NPU = "npu"
OTHER_DEVICES = frozenset({"cuda", "hip", "rocm", "xpu", "musa", "mps", "cpu", "hpu", "mlu"})
# torch_npu's dynamo backends, and torchair's.
NPU_BACKEND_NAMES = frozenset({"npu", "npugraph_ex", "npugraphs", "torchair"})

_PREFIXES = frozenset({"is", "use", "on", "has", "running"})
_SUFFIXES = frozenset({"available", "alike", "platform", "device", "enabled", "only"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# sglang's device predicates (sglang/srt/utils/common.py), known by their
# definition: is_npu() raises off NPU where torch.npu exists, is_hip() reads
# torch.version; their bodies are not plain enough to evaluate.
SGLANG_CHECKS = {
    "is_npu": NPU, "is_cuda": "cuda", "is_hip": "hip", "is_cuda_alike": "cuda", "is_xpu": "xpu",
    "is_cpu": "cpu", "is_hpu": "hpu", "is_musa": "musa", "is_mps": "mps",
}
# Functions known to return an NPU-aware backend: sglang's (torchair on NPU).
NPU_BACKEND_FUNCS = frozenset({"get_compiler_backend"})

_cache = {}


def device_by_name(ident):
    """The device an identifier names as a check (``_is_npu`` -> 'npu'), or None."""
    dev = _cache.get(ident, False)
    if dev is not False:
        return dev
    words = [w.lower() for w in _WORDS.findall(ident)]
    while words and words[0] in _PREFIXES:
        words.pop(0)
    while words and words[-1] in _SUFFIXES:
        words.pop()
    dev = words[0] if len(words) == 1 and (words[0] == NPU or words[0] in OTHER_DEVICES) else None
    _cache[ident] = dev
    return dev


def mentions_npu(ident):
    """Whether a backend's name has the word npu or torchair in it (a naming guess)."""
    words = {w.lower() for w in _WORDS.findall(ident)}
    return bool(words & {NPU, "torchair", "npugraph"})


def device_string(value):
    """'npu' or another device for a device string ("npu", "cuda:0"), else None."""
    dev = value.split(":", 1)[0].lower()
    return dev if dev == NPU or dev in OTHER_DEVICES else None


def known_check(dotted):
    """The device a dotted API checks (``torch.npu.is_available``, sglang's
    ``is_npu``), or None when it is not a known check."""
    parts = dotted.split(".")
    if parts[0] == "torch" and len(parts) == 3:
        if parts[2] == "is_available" and (parts[1] == NPU or parts[1] in OTHER_DEVICES):
            return parts[1]
        if parts[1] == "version" and parts[2] in OTHER_DEVICES:
            return parts[2]
    # sglang's module-level predicates (sglang.srt.utils, .utils.common), not
    # a method of some object that happens to share the name
    if parts[0] == "sglang" and parts[-1] in SGLANG_CHECKS and len(parts) > 2 and parts[-2] in ("utils", "common"):
        return SGLANG_CHECKS[parts[-1]]
    return None


def truth_of_device(dev, note):
    return (T if dev == NPU else F), note


def guessed(ident, dev, why):
    """A device check read from a name's spelling; the note says so, and why it could not be followed."""
    what = "an NPU" if dev == NPU else f"a {dev}"
    return truth_of_device(dev, f"{GUESS}: {ident!r} reads as {what} check; {why}")


def merge(vals):
    """One truth for several possible values (assignments, branches)."""
    kinds = [k for k, _ in vals]
    if len(set(kinds)) == 1:
        return vals[0]
    if UNK in kinds:
        return vals[kinds.index(UNK)]
    return FLAG, "differs between assignments or branches"
