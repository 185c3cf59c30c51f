"""sglang PR #26403: no torch.compile for the speculative-overlap helpers on NPU."""

from npu_compat.registry import Patch

_MODULE = "sglang.srt.managers.overlap_utils"
_PR = "sglang PR #26403"
_URL = "https://github.com/sgl-project/sglang/pull/26403"
_HOW = (
    "install npu_compat's own implementation as torch.compile(impl, dynamic=True, "
    "disable=True), which is the plain function: the same call path as the fixed upstream"
)
_REMOVE = (
    "every supported sglang build carries PR #26403 (0.5.13 and later do); "
    "until then it is harmless there: npu_compat reports upstream-fixed and changes nothing"
)

PATCHES = (
    Patch(
        name="overlap-assert-nonneg",
        module=_MODULE,
        function="_assert_nonneg_and_invalidate",
        params=("values", "buf", "indices"),
        impl="npu_compat.impl.overlap_utils:_assert_nonneg_and_invalidate",
        compile_kwargs={"dynamic": True},
        why=(
            "decorated with @torch.compile(dynamic=True) on every device; torch.compile is not "
            "fully supported on Ascend NPU (runtime errors or slowdowns)"
        ),
        how=_HOW,
        upstream=_PR,
        upstream_url=_URL,
        remove_when=_REMOVE,
    ),
    Patch(
        name="overlap-gather-spec-extras",
        module=_MODULE,
        function="_gather_spec_extras",
        params=("indices", "topk_p_buf", "topk_index_buf", "output_tokens_buf", "hidden_states_buf"),
        impl="npu_compat.impl.overlap_utils:_gather_spec_extras",
        compile_kwargs={"dynamic": True},
        why=(
            "decorated with @torch.compile(dynamic=True) on every device and called once per "
            "decode step under speculative decoding with overlap; torch.compile is not fully "
            "supported on Ascend NPU (runtime errors or slowdowns)"
        ),
        how=_HOW,
        upstream=_PR,
        upstream_url=_URL,
        remove_when=(
            "every supported sglang build carries PR #26403; from 0.5.13 the helper is gone "
            "(a Triton kernel replaced it) and npu_compat reports absent"
        ),
    ),
)
