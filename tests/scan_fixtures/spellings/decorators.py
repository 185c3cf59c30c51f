"""Decorator spellings, with and without a call."""
import torch


@torch.compile
def bare(x):
    return x + 1


@torch.compile()
def empty_call(x):
    return x + 1


@torch.compile(dynamic=True, fullgraph=True)
def with_kwargs(x):
    return x * 2


class Model(torch.nn.Module):
    @torch.compile(mode="max-autotune-no-cudagraphs")
    def forward(self, x):
        return x

    class Inner:
        @torch.compile
        def step(self, x):
            return x


def outer():
    @torch.compile(dynamic=False)
    def inner(x):
        return x

    return inner


@torch.compiler.compile(dynamic=True)
def via_compiler_namespace(x):
    return x
