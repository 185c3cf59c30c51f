"""Guards: disable=, backend=, enclosing ifs."""
import os

import torch

from sglang.srt.utils import get_compiler_backend, is_cuda, is_npu

_is_npu = is_npu()
_is_cuda = is_cuda()
_DEBUG = os.environ.get("DEBUG_COMPILE") == "1"


@torch.compile(dynamic=True, disable=_is_npu)
def g_disable_npu(x):
    return x


@torch.compile(disable=_is_npu or _DEBUG)
def g_disable_or(x):
    return x


@torch.compile(dynamic=True, backend=get_compiler_backend())
def g_backend(x):
    return x


@torch.compile(disable=True)
def g_disable_literal(x):
    return x


@torch.compile(disable=torch.npu.is_available())
def g_torch_npu(x):
    return x


if not _is_npu:

    @torch.compile
    def g_if_not_npu(x):
        return x


if _is_cuda:
    fast = torch.compile(g_disable_npu)

if is_cuda():

    @torch.compile
    def g_if_is_cuda(x):
        return x


if _is_npu:
    pass
else:

    @torch.compile
    def g_else_npu(x):
        return x


class Layer:
    def forward(self, x):
        if not _is_npu:
            return torch.compile(self.impl)(x)
        return x


@torch.compile(disable=False)
def u_disable_false(x):
    return x


@torch.compile(disable=_DEBUG)
def u_debug_flag(x):
    return x


@torch.compile(disable=not _is_npu)
def u_not_npu(x):
    return x


if _is_npu or _is_cuda:

    @torch.compile
    def u_npu_or_cuda(x):
        return x
