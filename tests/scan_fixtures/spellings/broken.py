import torch


@torch.compile
def broken(x:
    return x
