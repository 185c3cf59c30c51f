"""Guards: upstream's NPU remedy, ``disable=is_npu()``, for compiled sites of released sglang.

Each record names one site that NPU execution reaches, with the call path
that reaches it (``evidence``, read from the wheels), the releases where it
is compiled (``versions``: ``scripts/check_releases.py`` checks it against
every release from 0.5.11 to 0.5.23) and the upstream pull requests that
fixed sibling sites the same way.  Sites
with ``backend=get_compiler_backend()`` count: that backend sends NPU to
torchair, and upstream had to add ``disable=_is_npu`` to three such sites
after failures on NPU (#16115, #18553, #26573).  See docs/guards.md.
"""

from npu_compat.registry import Guard

_SIBLINGS = "sglang PRs #16115, #18553, #26573"
_SIBLINGS_URL = "https://github.com/sgl-project/sglang/pull/26573"
_BACKEND_ONLY = (
    "compiled with backend=get_compiler_backend() only (torchair on NPU); upstream had to add disable=_is_npu "
    "to three such sites after NPU failures"
)

PATCHES = (
    Guard(
        name="rotary-apply-native",
        module="sglang.srt.layers.rotary_embedding.utils",
        qualname="apply_rotary_pos_emb_native",
        params=("q", "k", "cos", "sin", "unsqueeze_dim"),
        why=_BACKEND_ONLY + "; sglang issue #10405 shows a GLM-4.5 traceback on Ascend through a compiled rotary function",
        evidence=(
            "on NPU utils.apply_rotary_pos_emb is apply_rotary_pos_emb_npu, which falls back to this function "
            "when cos is not 2-D, q is not 3-D, heads >= 1000 or head size >= 896 (callers: VisionAttention.forward, "
            "gemma3, glm_image_vl); FourierRotaryEmbedding.forward (rope_variant, bound there by name) calls it "
            "on every device"
        ),
        versions="0.5.11 to 0.5.23",
        upstream=_SIBLINGS,
        upstream_url=_SIBLINGS_URL,
        remove_when="sglang guards apply_rotary_pos_emb_native with disable=_is_npu (then: upstream-fixed)",
    ),
    Guard(
        name="llama4-mul-attn-scale",
        module="sglang.srt.models.llama4",
        qualname="Llama4Attention._mul_attn_scale",
        params=("self", "positions", "q"),
        why=_BACKEND_ONLY,
        evidence=(
            "Llama4Attention.forward has its own `if _is_npu:` branch (Llama 4 runs on Ascend) and calls "
            "self._mul_attn_scale on NoPE layers when attn_temperature_tuning is on, with no device check"
        ),
        versions="0.5.11 to 0.5.23",
        upstream=_SIBLINGS,
        upstream_url=_SIBLINGS_URL,
        remove_when="sglang guards Llama4Attention._mul_attn_scale with disable=_is_npu (then: upstream-fixed)",
    ),
    Guard(
        name="minimax-vl-rope-applier",
        module="sglang.srt.models.minimax_vl_common",
        qualname="_minimax_rope_applier",
        params=("q", "k", "position_embeddings", "x_shape"),
        why=_BACKEND_ONLY,
        evidence=(
            "passed as customized_position_embedding_applier to VisionAttention when the model is built; "
            "VisionAttention.forward calls it whenever position embeddings are given, with no device dispatch "
            "(applies only where the MiniMax VL model is loaded)"
        ),
        versions="0.5.16 to 0.5.23 (the module is new in 0.5.16)",
        upstream=_SIBLINGS,
        upstream_url=_SIBLINGS_URL,
        remove_when="sglang guards _minimax_rope_applier with disable=_is_npu (then: upstream-fixed)",
    ),
    Guard(
        name="hyperconnection-compute",
        module="sglang.srt.layers.hyperconnection",
        qualname="GatedResidual.__init__",
        scope="calls",
        why="compiles its mix and combine closures per instance with the default (inductor) backend on every device",
        evidence=(
            "GatedResidual.mix and .combine take their fast paths only on CUDA tensors (CuTe / JIT kernels); "
            "on NPU tensors they always call self._mix_compute and self._combine_compute, the compiled closures "
            "(used by the qwen4_exp model)"
        ),
        versions="0.5.20 to 0.5.23 (the module is new in 0.5.20)",
        upstream="sglang PR #26403 (same remedy)",
        upstream_url="https://github.com/sgl-project/sglang/pull/26403",
        remove_when="sglang compiles these closures with disable=_is_npu (then: npu_compat finds nothing to do)",
    ),
    Guard(
        name="rotary-rl-on-policy",
        module="sglang.srt.layers.rotary_embedding.base",
        qualname="RotaryEmbedding.__init__",
        scope="calls",
        why=(
            "with server_args.rl_on_policy_target set (deterministic RL on-policy inference), every RotaryEmbedding "
            "compiles apply_rotary_emb with the default (inductor) backend, on every device"
        ),
        evidence=(
            "RotaryEmbedding.__init__ then sets self._forward_method = self.forward_native and "
            "self._apply_rotary_emb_wrapped = torch.compile(dynamic=True)(apply_rotary_emb) (base.py:108-112 in "
            "0.5.13, :129-133 in 0.5.14; the same from 0.5.11); forward_native calls it for query and key (base.py:240, 249) and "
            "MultiPlatformOp.forward (layers/utils/multi_platform.py:83) dispatches to _forward_method. NPU gets "
            "there: server_args accepts the ascend attention and sampling backends for deterministic inference, and "
            "model_runner calls init_npu_backend(), which loads torch_npu.contrib.transfer_to_npu"
        ),
        versions="0.5.11 to 0.5.14",
        upstream="sglang 0.5.15 compiles it with disable=_is_npu",
        upstream_url="",
        remove_when="every supported sglang is 0.5.15 or later (there: upstream-fixed)",
    ),
    Guard(
        name="ernie-vl-rotary",
        module="sglang.srt.layers.rotary_embedding.mrope",
        qualname="Ernie4_5_VLRotaryEmbedding.__init__",
        scope="calls",
        why="compiles apply_rotary_emb per instance with the default (inductor) backend on every device",
        evidence=(
            "Ernie4_5_VLRotaryEmbedding.forward goes to forward_cuda on every device but XPU; there 1-D positions "
            "off CUDA reach the compiled function (seen on the simulated NPU), 2-D positions a Triton kernel. "
            "ernie45_vl passes 2-D positions whenever its config has mrope_section: reachability unclear, opt-in"
        ),
        versions="0.5.11 to 0.5.23",
        upstream="the identical site in layers/rotary_embedding/base.py got disable=_is_npu in 0.5.15",
        upstream_url="",
        remove_when="sglang compiles it with disable=_is_npu",
        default=False,
    ),
    Guard(
        name="dflash-swiglu-alpha-limit",
        module="sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe",
        qualname="swiglu_no_interleaved_with_alpha_and_limit",
        params=("x", "gemm1_alpha", "gemm1_limit"),
        why="@torch.compile with the default (inductor) backend on every device",
        evidence=(
            "DFlashMLP.__init__ (models/dflash.py) binds it into a functools.partial when the draft model's "
            "hidden_act is swigluoai; DFlash runs on NPU, but no Ascend draft model with swigluoai is known: opt-in"
        ),
        versions="0.5.14 to 0.5.23 (new in 0.5.14)",
        upstream="sglang PR #26403 (same remedy)",
        upstream_url="https://github.com/sgl-project/sglang/pull/26403",
        remove_when="sglang guards it with disable=_is_npu, or no DFlash draft on NPU uses swigluoai",
        default=False,
    ),
)
