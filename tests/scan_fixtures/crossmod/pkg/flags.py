from .utils import is_cuda, is_npu

_is_npu = is_npu()
_is_cuda = is_cuda()
EAGER_ON_NPU = _is_npu or not _is_cuda
