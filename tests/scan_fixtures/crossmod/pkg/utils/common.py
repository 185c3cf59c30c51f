"""Shaped like sglang.srt.utils.common: device predicates with bodies."""
import torch


def is_npu() -> bool:
    if not hasattr(torch, "npu"):
        return False
    if not torch.npu.is_available():
        raise RuntimeError("torch_npu found, but no NPU")
    return True


def is_cuda():
    return torch.cuda.is_available() and torch.version.cuda is not None


def get_device_kind():
    return "generic"
