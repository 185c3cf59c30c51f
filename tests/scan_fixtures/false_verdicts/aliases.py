"""torch.compile bound to a name, then applied through it."""
import functools

import torch

from sglang.srt.utils import is_npu

_is_npu = is_npu()
_compile = torch.compile
compile_fn = torch.compile if not _is_npu else (lambda f: f)
compile_on_npu = torch.compile if _is_npu else (lambda f: f)
eager_on_npu = functools.partial(torch.compile, dynamic=True, disable=_is_npu)


@_compile
def a_plain(x):
    return x


@compile_fn
def a_conditional(x):
    return x


b_conditional = compile_fn(a_plain)


@compile_on_npu
def a_on_npu(x):
    return x


@eager_on_npu
def a_partial(x):
    return x


COMPILERS = {"inductor": torch.compile}
