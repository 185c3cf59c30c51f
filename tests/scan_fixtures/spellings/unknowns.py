"""Sites the scanner cannot judge."""
import torch

from .config import DISABLE_COMPILE


@torch.compile(disable=_mystery_flag)
def k_unresolved(x):
    return x


@torch.compile(disable=DISABLE_COMPILE)
def k_imported(x):
    return x


@torch.compile(backend=_my_backend)
def k_backend(x):
    return x


def k_kwargs(fn, **kwargs):
    return torch.compile(fn, **kwargs)
