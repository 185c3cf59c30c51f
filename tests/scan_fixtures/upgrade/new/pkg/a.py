"""The next release: lines moved, one site fixed, one removed, one added."""
import torch

from sglang.srt.utils import is_npu

_is_npu = is_npu()


@torch.compile
def stays(x):
    return x


@torch.compile(dynamic=True, disable=_is_npu)
def fixed(x):
    return x


class M:
    def build(self, helper):
        self.fn = torch.compile(dynamic=True)(helper)


@torch.compile
def added(x):
    return x
