"""Make this process look like it runs on an Ascend NPU (tensors stay on the CPU).

torch_npu registers torch's privateuse1 backend as "npu" and a device module
``torch.npu``; this does the same with a stand-in module.  It is process-wide
and cannot be undone: call it in a subprocess.
"""

import types


class _Dummy:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return _Dummy()


class _FakeNpuModule(types.ModuleType):
    def __init__(self, available=True, raises=None):
        super().__init__("torch.npu")
        self._available = available
        self._raises = raises

    def is_available(self):
        if self._raises is not None:
            raise self._raises
        return self._available

    def device_count(self):
        return 1 if self._available else 0

    def __getattr__(self, name):  # Stream, Event, current_device, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy


def install(available=True, raises=None):
    import torch

    torch.utils.rename_privateuse1_backend("npu")
    torch._register_device_module("npu", _FakeNpuModule(available, raises))
    return torch.npu
