import torch

from sglang.srt.utils import is_npu

_is_npu = is_npu()


@torch.compile
def stays(x):
    return x


@torch.compile(dynamic=True)
def fixed(x):
    return x


@torch.compile
def removed(x):
    return x


class M:
    def build(self, helper):
        self.fn = torch.compile(dynamic=True)(helper)
