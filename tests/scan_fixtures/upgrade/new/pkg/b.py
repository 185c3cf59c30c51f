import torch

from sglang.srt.utils import get_compiler_backend


@torch.compile(backend=get_compiler_backend())
def on_torchair(x):
    return x
