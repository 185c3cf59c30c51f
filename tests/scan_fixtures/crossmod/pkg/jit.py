import torch

jit = torch.compile
