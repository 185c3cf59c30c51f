"""Names with npu or torchair in them are not NPU checks."""
import torch


def build(model, server_args):
    if not server_args.enable_torchair_compile:
        return torch.compile(model)
    return model


def compiled(fn, npu_graph_bs):
    if not npu_graph_bs:
        return torch.compile(fn)
    return fn


if not npu_graph_bs_default:
    late = torch.compile(lambda x: x)
