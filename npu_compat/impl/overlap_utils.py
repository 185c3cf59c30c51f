"""Eager implementations of the two helpers of ``sglang.srt.managers.overlap_utils``.

Same signatures and results as upstream's; written for npu_compat.  On NPU they
are installed as the plain functions (``torch.compile(..., disable=True)`` is
the identity), so each call costs exactly what the fixed upstream costs.
"""

from typing import Optional, Tuple

import torch


def _assert_nonneg_and_invalidate(values: torch.Tensor, buf: torch.Tensor, indices: torch.Tensor) -> None:
    # A device-side assert: no host sync.  Slots start at -1 and are reset to
    # -1 once consumed, so a negative value means a slot was read before it
    # was written.
    torch._assert_async(torch.all(values >= 0))
    buf[indices] = -1


def _gather_spec_extras(
    indices: torch.Tensor,
    topk_p_buf: torch.Tensor,
    topk_index_buf: torch.Tensor,
    output_tokens_buf: torch.Tensor,
    hidden_states_buf: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    hidden = None if hidden_states_buf is None else hidden_states_buf[indices]
    return topk_p_buf[indices], topk_index_buf[indices], output_tokens_buf[indices], hidden
