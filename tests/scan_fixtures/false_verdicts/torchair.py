"""NPU's own backend: npu-backend, not guarded."""
import torch

from sglang.srt.utils import get_compiler_backend, is_npu

_is_npu = is_npu()


@torch.compile(dynamic=True, backend=get_compiler_backend())
def t_backend(x):
    return x


@torch.compile(dynamic=True, backend=get_compiler_backend(), disable=_is_npu)
def t_backend_disabled(x):
    return x


@torch.compile(backend="npugraph_ex")
def t_npugraph(x):
    return x


def t_local(fn):
    backend = get_compiler_backend("npugraph_ex")
    return torch.compile(fn, backend=backend)
