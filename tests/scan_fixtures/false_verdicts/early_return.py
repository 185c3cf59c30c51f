"""A dominating early return is a guard."""
import torch

from sglang.srt.utils import is_npu

_is_npu = is_npu()


def maybe_compile(fn):
    if _is_npu:
        return fn
    return torch.compile(fn)


def maybe_compile_raise(fn):
    if not _is_npu:
        pass
    else:
        raise RuntimeError("no compile on NPU")
    return torch.compile(fn)


def compile_on_npu_only(fn):
    if not _is_npu:
        return fn
    return torch.compile(fn)
