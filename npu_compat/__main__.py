from npu_compat.cli import entry

entry()
