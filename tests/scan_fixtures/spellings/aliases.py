"""Import aliases."""
import torch as t
import torch._dynamo as dynamo
from torch import compile as tc
from torch.compiler import compile as compiler_compile


@t.compile
def a(x):
    return x


@tc(dynamic=True)
def b(x):
    return x


@compiler_compile
def c(x):
    return x


@dynamo.optimize("eager")
def d(x):
    return x


def e(fn):
    from torch import compile as local_compile

    return local_compile(fn)
