"""npu_compat's own helpers against an independent eager reference, and against upstream's compiled ones."""

import pytest
import torch
from conftest import run_py

from npu_compat.impl.overlap_utils import _assert_nonneg_and_invalidate, _gather_spec_extras


def reference_gather(indices, topk_p, topk_index, tokens, hidden):
    # Row by row, no advanced indexing: independent of the implementation.
    rows = [int(i) for i in indices]

    def take(buf):
        if not rows:
            return buf.new_empty((0,) + tuple(buf.shape[1:]))
        return torch.stack([buf[r] for r in rows])

    return take(topk_p), take(topk_index), take(tokens), None if hidden is None else take(hidden)


def buffers(pool=4096, topk=4, hidden=7168, with_hidden=True, noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    topk_p = torch.rand(pool, topk, generator=g)
    topk_index = torch.randint(0, 150000, (pool, topk), generator=g)
    tokens = torch.randint(-1, 150000, (pool,), generator=g)
    hid = torch.randn(pool, hidden, generator=g).to(torch.bfloat16) if with_hidden else None
    if noncontig:  # views with strides, as slices of larger buffers are
        topk_p = torch.rand(pool, topk * 2, generator=g)[:, ::2]
        topk_index = torch.randint(0, 9, (topk, pool), generator=g).t()
        assert not topk_p.is_contiguous() and not topk_index.is_contiguous()
    return topk_p, topk_index, tokens, hid


CASES = {
    "random": lambda: torch.randint(0, 4096, (64,)),
    "empty": lambda: torch.empty(0, dtype=torch.int64),
    "repeated": lambda: torch.tensor([7, 7, 7, 0, 4095, 7]),
    "int32": lambda: torch.randint(0, 4096, (33,), dtype=torch.int32),
    "batch256": lambda: torch.randperm(4096)[:256],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("with_hidden", [True, False])
@pytest.mark.parametrize("noncontig", [False, True])
def test_gather_equals_reference(case, with_hidden, noncontig):
    idx = CASES[case]()
    bufs = buffers(hidden=256, with_hidden=with_hidden, noncontig=noncontig)
    got = _gather_spec_extras(idx, *bufs)
    want = reference_gather(idx, *bufs)
    assert len(got) == 4
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)


def test_gather_serving_size_bf16_hidden():
    idx = torch.randint(0, 4096, (256,))
    bufs = buffers()
    got = _gather_spec_extras(idx, *bufs)
    assert got[3].dtype == torch.bfloat16 and got[3].shape == (256, 7168)
    assert torch.equal(got[3], reference_gather(idx, *bufs)[3])


def test_assert_invalidates_and_trips_on_negative():
    buf = torch.arange(10)
    _assert_nonneg_and_invalidate(torch.tensor([0, 3, 5]), buf, torch.tensor([2, 4]))
    assert buf.tolist() == [0, 1, -1, 3, -1, 5, 6, 7, 8, 9]
    _assert_nonneg_and_invalidate(torch.empty(0, dtype=torch.int64), buf, torch.empty(0, dtype=torch.int64))
    with pytest.raises(RuntimeError):
        _assert_nonneg_and_invalidate(torch.tensor([1, -1]), buf, torch.tensor([0]))


def test_bit_identical_to_upstreams_compiled_helpers_on_cpu(tree):
    # The one test that runs inductor (about 20 s per helper here): the
    # counter that other tests expect to stay at zero does move when the
    # upstream helpers are compiled, and both give the same bits as ours.
    _, r = run_py(
        """
import torch
import sglang.srt.managers.overlap_utils as m
from npu_compat.impl import overlap_utils as own
from support import report
torch.manual_seed(0)
pool, topk, hidden = 512, 4, 64
bufs = (torch.rand(pool, topk), torch.randint(0, 1000, (pool, topk)), torch.randint(0, 1000, (pool,)),
        torch.randn(pool, hidden).to(torch.bfloat16))
same = []
for idx in (torch.randint(0, pool, (8,)), torch.randint(0, pool, (37,))):
    a = m._gather_spec_extras(idx, *bufs)
    b = own._gather_spec_extras(idx, *bufs)
    same.append(all(torch.equal(x, y) for x, y in zip(a, b)))
b1, b2 = torch.arange(pool), torch.arange(pool)
i = torch.randint(0, pool, (16,))
m._assert_nonneg_and_invalidate(b1[i], b1, i)
own._assert_nonneg_and_invalidate(b2[i], b2, i)
same.append(torch.equal(b1, b2))
report.emit(same=same, frames=report.frames())
""",
        tree=tree("prefix"),
        timeout=600,
    )
    assert r["same"] == [True, True, True]
    assert r["frames"] > 0
