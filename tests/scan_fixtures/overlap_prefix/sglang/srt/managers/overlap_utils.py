"""Fixture shaped like sglang/srt/managers/overlap_utils.py before sglang PR #26403."""
from typing import Optional

import torch

from sglang.srt.utils import get_compiler_backend


@torch.compile(dynamic=True)
def _assert_nonneg_and_invalidate(values, buf, indices):
    torch._assert_async(torch.all(values >= 0))
    buf[indices] = -1


@torch.compile(dynamic=True)
def _gather_spec_extras(
    indices,
    topk_p_buf,
    topk_index_buf,
    output_tokens_buf,
    hidden_states_buf: Optional[torch.Tensor],
):
    hidden = None if hidden_states_buf is None else hidden_states_buf[indices]
    return topk_p_buf[indices], topk_index_buf[indices], output_tokens_buf[indices], hidden


@torch.compile(dynamic=True, backend=get_compiler_backend())
def _resolve_future_token_ids(input_ids, future_token_ids_map):
    input_ids[:] = torch.where(
        input_ids < 0,
        future_token_ids_map[torch.clamp(-input_ids, min=0)],
        input_ids,
    )


class FutureMap:
    def __init__(self, size):
        self.size = size
