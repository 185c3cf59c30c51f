"""sglang general plugin: ``pip install npu-compat`` alone activates it in every sglang process.

sglang (0.5.11 and later) calls each entry point of the group
``sglang.srt.plugins`` with no arguments at the start of the engine and of
every scheduler process; the scheduler has imported overlap_utils by then,
which activate() handles (it patches modules already imported).  sglang's
``SGLANG_PLUGINS`` allow-list and ``NPU_COMPAT_DISABLE=1`` turn it off.
"""


def load():
    """Entry point for sglang's plugin loader.  Idempotent; raises only under NPU_COMPAT_STRICT=1."""
    import npu_compat

    try:
        npu_compat.activate(route="plugin")
    except npu_compat.NpuCompatError:
        raise  # NPU_COMPAT_STRICT=1 asked for it
    except Exception as exc:
        from npu_compat import _log

        _log.warning("npu_compat: plugin activation failed: %s: %s", type(exc).__name__, exc)
