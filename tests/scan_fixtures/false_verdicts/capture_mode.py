"""A module-level flag rebound through `global` is a run-time flag (sglang 0.5.13 cuda_graph_runner)."""
from contextlib import contextmanager

import torch

is_capture_mode = False


def get_is_capture_mode():
    return is_capture_mode


@contextmanager
def model_capture_mode():
    global is_capture_mode
    is_capture_mode = True
    yield
    is_capture_mode = False


def patch_model(model):
    if get_is_capture_mode():
        return torch.compile(model)
    return model
