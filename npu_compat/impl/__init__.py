"""npu_compat's own implementations of patched upstream functions (these import torch)."""
