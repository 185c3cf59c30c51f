import torch

from pkg import REEXPORTED
from pkg.utils.common import get_device_kind


@torch.compile(disable=REEXPORTED)
def m_reexported(x):
    return x


@torch.compile(disable=get_device_kind() == "cuda")
def m_kind(x):
    return x
