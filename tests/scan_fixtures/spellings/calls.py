"""Call forms, and look-alikes that are not torch.compile."""
import re

import torch


def _f(x):
    return x


compiled_f = torch.compile(_f, dynamic=True)
late = torch.compile(dynamic=True)(_f)
legacy = torch._dynamo.optimize("inductor")(_f)


def build(fn, **opts):
    return torch.compile(fn, **opts)


# Not sites: builtin compile, re.compile, Module.compile, the disable decorators.
code = compile("1 + 1", "<expr>", "eval")
pattern = re.compile(r"\d+")
torch.compiler.disable(_f)
torch._dynamo.disable(_f)
torch.nn.Linear(2, 2).compile()
text = "torch.compile(_f)"
