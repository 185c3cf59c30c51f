"""``scan --patch`` writes upstream's style (black, 88 columns), never a patch that breaks an import,
and says why when there is nothing to patch."""

import os
import subprocess
import sys

import pytest
from conftest import clean_env

from npu_compat.scan.patch import Want, check_module, make_patch

UTILS = '''
def is_npu():
    return False

def is_cuda():
    return False
'''

# sglang 0.5.14's layers/rotary_embedding/base.py, reduced: the patched line would be 91 columns
ROTARY = '''import torch

from sglang.srt.utils import is_cuda

_is_cuda = is_cuda()


def apply_rotary_emb(x):
    return x


class RotaryEmbedding:
    def __init__(self, on_policy):
        self._apply_rotary_emb_wrapped = apply_rotary_emb
        if on_policy is not None or _is_cuda:
            self._apply_rotary_emb_wrapped = torch.compile(dynamic=True)(
                apply_rotary_emb
            )


class Scaled:
    @torch.compile(dynamic=True, fullgraph=True, mode="max-autotune-no-cudagraphs")
    def forward(self, x):
        return x
'''

# the device flags come from another module, and an import follows them
LATEIMPORT = '''import torch

from sglang.srt.utils.common import is_cuda

_is_cuda = is_cuda()

from sglang.srt.layers.rotary import apply_rotary_emb


@torch.compile(dynamic=True)
def rope(x):
    return apply_rotary_emb(x)
'''


# sglang 0.5.15's models/cohere2_moe.py, reduced: adding is_npu to the import makes it 91 columns
COHERE = '''import torch

from sglang.srt.layers.linear import RowParallelLinear
from sglang.srt.utils import add_prefix, get_compiler_backend, is_cuda, make_layers


@torch.compile(backend=get_compiler_backend())
def _cohere_layer_norm(hidden_states, weight, variance_epsilon):
    return hidden_states
'''

# sglang 0.5.15's torch_flex_backend.py and mrope.py, reduced: a call with the function
# as its first argument (90 columns once patched), `torch.compile(...)(fn)` on one line (103),
# and arguments hugged on a line of their own (what black writes when only they fit)
FLEX = '''import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from sglang.srt.layers.rotary import apply_rotary_emb
from sglang.srt.utils import is_npu

_is_npu = is_npu()


class TorchFlexAttnBackend:
    def __init__(self, model_runner):
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.flex_attention = torch.compile(flex_attention, dynamic=True)
        self._apply_rotary_emb_wrapped = torch.compile(dynamic=True)(apply_rotary_emb)
        self.create_block_mask_compiled = torch.compile(
            create_block_mask, dynamic=True, fullgraph=True, mode="reduce-overhead"
        )
'''


def make_tree(base):
    files = {
        "sglang/__init__.py": "",
        "sglang/srt/__init__.py": "",
        "sglang/srt/utils/__init__.py": UTILS,
        "sglang/srt/utils/common.py": UTILS,
        "sglang/srt/layers/__init__.py": "",
        "sglang/srt/layers/rotary.py": ROTARY,
        "sglang/srt/layers/late.py": LATEIMPORT,
        "sglang/srt/layers/flex.py": FLEX,
        "sglang/srt/models/__init__.py": "",
        "sglang/srt/models/cohere.py": COHERE,
    }
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return base


def patched(tmp_path, *wants):
    root = make_tree(tmp_path / "site")
    res = make_patch(str(root), list(wants), layout="installed")
    assert not res.left_out, res.left_out
    return root, {rel: new.decode() for rel, old, new in res.files}


def test_a_long_call_is_split_one_option_a_line_as_upstream_did(tmp_path):
    _, files = patched(tmp_path, Want("sglang.srt.layers.rotary", "RotaryEmbedding.__init__"),
                       Want("sglang.srt.layers.rotary", "Scaled.forward"))  # fmt: skip
    new = files["sglang/srt/layers/rotary.py"]
    assert (
        "            self._apply_rotary_emb_wrapped = torch.compile(\n"
        "                dynamic=True,\n"
        "                disable=_is_npu,\n"
        "            )(apply_rotary_emb)\n"
    ) in new
    assert (
        "    @torch.compile(\n"
        "        dynamic=True,\n"
        "        fullgraph=True,\n"
        '        mode="max-autotune-no-cudagraphs",\n'
        "        disable=_is_npu,\n"
        "    )\n"
        "    def forward"
    ) in new
    assert_black_style(ROTARY, new)


def assert_black_style(original, new):
    assert max(len(line) for line in new.splitlines()) <= 88
    black = pytest.importorskip("black")  # a test-time check only: black is no dependency of npu-compat
    mode = black.Mode(line_length=88)
    assert black.format_str(original, mode=mode) == original  # the fixture is black's own style...
    assert black.format_str(new, mode=mode) == new  # ...and so is the patched file


def test_an_import_that_no_longer_fits_is_split_one_name_a_line(tmp_path):
    root, files = patched(tmp_path, Want("sglang.srt.models.cohere", "_cohere_layer_norm"))
    new = files["sglang/srt/models/cohere.py"]
    assert (
        "from sglang.srt.utils import (\n"
        "    add_prefix,\n"
        "    get_compiler_backend,\n"
        "    is_cuda,\n"
        "    is_npu,\n"
        "    make_layers,\n"
        ")\n"
        "\n"
        "_is_npu = is_npu()\n"
        "\n"
        "\n"
        "@torch.compile(backend=get_compiler_backend(), disable=_is_npu)\n"
    ) in new
    assert check_module(new.encode(), "cohere.py") is None
    assert_black_style(COHERE, new)


def test_calls_that_no_longer_fit_are_split_as_black_keeps_them(tmp_path):
    _, files = patched(tmp_path, Want("sglang.srt.layers.flex", "TorchFlexAttnBackend.__init__"))
    new = files["sglang/srt/layers/flex.py"]
    assert (
        "        self.flex_attention = torch.compile(\n"
        "            flex_attention,\n"
        "            dynamic=True,\n"
        "            disable=_is_npu,\n"
        "        )\n"
        "        self._apply_rotary_emb_wrapped = torch.compile(\n"
        "            dynamic=True,\n"
        "            disable=_is_npu,\n"
        "        )(apply_rotary_emb)\n"
        "        self.create_block_mask_compiled = torch.compile(\n"
        "            create_block_mask,\n"
        "            dynamic=True,\n"
        "            fullgraph=True,\n"
        '            mode="reduce-overhead",\n'
        "            disable=_is_npu,\n"
        "        )\n"
    ) in new
    assert_black_style(FLEX, new)


def test_the_added_import_precedes_the_flag_that_uses_it(tmp_path):
    root, files = patched(tmp_path, Want("sglang.srt.layers.late", "rope"))
    new = files["sglang/srt/layers/late.py"]
    assert new.index("from sglang.srt.utils import is_npu\n") < new.index("_is_npu = is_npu()\n")
    assert check_module(new.encode(), "late.py") is None
    (root / "sglang/srt/layers/late.py").write_text(new)
    proc = subprocess.run([sys.executable, "-c", "import sglang.srt.layers.late as m; print(m._is_npu)"],
                          cwd=tmp_path, env=clean_env(PYTHONPATH=str(root)), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


@pytest.mark.parametrize("source, message", [
    ("import torch\n_is_npu = is_npu()\nfrom sglang.srt.utils import is_npu\n", "read is_npu at line 2 before"),
    ("import torch\n@torch.compile(disable=_is_npu)\ndef f(): pass\n_is_npu = False\n", "read _is_npu at line 2"),
    ("import torch\ndef f():\n    return _is_npu\n", "use _is_npu without defining it"),
    ("def f(:\n", "would not compile"),
])  # fmt: skip
def test_a_module_that_would_not_import_is_caught(source, message):
    assert message in check_module(source.encode(), "m.py")


@pytest.mark.parametrize("source", [
    "from sglang.srt.utils import is_npu\n_is_npu = is_npu()\n@torch.compile(disable=_is_npu)\ndef f(): pass\n",
    "try:\n    from sglang.srt.utils import is_npu\nexcept ImportError:\n    is_npu = None\n_is_npu = is_npu()\n",
    "def f():\n    return _is_npu\nfrom x import is_npu\n_is_npu = is_npu()\n",
])  # fmt: skip
def test_a_module_that_imports_is_passed(source):
    assert check_module(source.encode(), "m.py") is None


def scan_patch(tmp_path, *args):
    env = clean_env(COLUMNS="80")  # the installed package, from outside the checkout, no TTY
    return subprocess.run([sys.executable, "-m", "npu_compat", "scan", *args], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("extra, why", [
    (["--site", "sglang.srt.layers.nothere:f"], "module sglang.srt.layers.nothere is not in this tree"),
    (["--site", "sglang.srt.layers.rotary:nope", "--site", "sglang.srt.layers.late:gone"], "all 2 sites left out"),
])  # fmt: skip
def test_nothing_to_patch_is_one_line_and_exit_1(tmp_path, extra, why):
    root = make_tree(tmp_path / "site")
    proc = scan_patch(tmp_path, "--patch", str(root), *extra)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("npu-compat scan: error: nothing to patch")
    assert why in proc.stderr


def test_from_audit_with_nothing_that_fell_back_is_one_line_and_exit_1(tmp_path):
    root = make_tree(tmp_path / "site")
    (tmp_path / "empty.jsonl").write_text("")
    proc = scan_patch(tmp_path, "--patch", str(root), "--from-audit", str(tmp_path / "empty.jsonl"))
    assert proc.returncode == 1 and proc.stdout == ""
    # the empty file is named on its own line; the verdict is the last line
    assert proc.stderr.splitlines()[-1].startswith("npu-compat scan: error: nothing to patch"), proc.stderr


def test_a_patch_that_applies_exits_0(tmp_path):
    root = make_tree(tmp_path / "site")
    proc = scan_patch(tmp_path, "--patch", str(root), "--layout", "installed", "--site", "sglang.srt.layers.late:rope")
    assert proc.returncode == 0 and "+_is_npu = is_npu()" in proc.stdout, proc.stderr
    assert all(len(line) <= 89 for line in proc.stdout.splitlines())  # 88 columns and the diff's +/-
    assert os.path.isdir(root)
