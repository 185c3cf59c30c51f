"""run_py's forked children (tests/support/zygote.py) look like fresh interpreters to the scenario.

One scenario that reports what a test can see of its process (argv, sys.path,
cwd, environment, __main__, what is imported, output at exit, exit status)
runs once forked and once in a fresh ``python -c``; the reports must match.
"""

import json
import os
import subprocess
import sys
import textwrap

from conftest import TESTS, clean_env, forkable, run_python

PROBE = textwrap.dedent(
    """
    import torch
    import atexit, json, os, sys, threading, time
    main = sys.modules["__main__"]
    seen = {
        "argv": sys.argv, "path": sys.path[:3], "cwd": os.getcwd(), "env": os.environ.get("NPU_COMPAT_X"),
        "pythonpath": os.environ.get("PYTHONPATH"), "main": [getattr(main, "__file__", None), main.__spec__],
        "npu_compat": "npu_compat" in sys.modules, "sglang": "sglang" in sys.modules,
        "support": "support" in sys.modules, "threads": threading.active_count(),
        "omp": torch.get_num_threads(), "sum": torch.arange(10).sum().item(),
    }
    print("RESULT:" + json.dumps(seen))
    atexit.register(lambda: print("atexit ran"))
    def late():
        time.sleep(0.2)
        print("non-daemon thread joined")
    threading.Thread(target=late).start()
    sys.stdout.write("unflushed at exit")
    if sys.argv[1] == "raise":
        raise KeyError("boom")
    sys.exit(int(sys.argv[1]))
    """
)


def test_a_forked_child_reports_what_a_fresh_one_does(tmp_path):
    env = clean_env(PYTHONPATH=os.pathsep.join([str(tmp_path), TESTS]), NPU_COMPAT_X="1")
    assert forkable(PROBE, env)
    assert not forkable("import npu_compat\nimport torch\n", env)  # npu_compat before torch: fresh
    assert not forkable("import torch\n", dict(env, TORCHDYNAMO_VERBOSE="1"))  # read when torch imports
    assert not forkable("import os\nos.environ['X'] = '1'\nimport torch\n", env)
    for arg in ("0", "3", "raise"):
        forked = run_python(sys.executable, PROBE, env, [arg])
        fresh = subprocess.run([sys.executable, "-c", PROBE, arg], env=env, capture_output=True, text=True, timeout=240)
        assert forked.returncode == fresh.returncode == {"0": 0, "3": 3, "raise": 1}[arg]
        assert forked.stdout == fresh.stdout, (forked.stdout, fresh.stdout)
        assert forked.stdout.endswith("unflushed at exitnon-daemon thread joined\natexit ran\n")
        assert forked.stderr == fresh.stderr, (forked.stderr, fresh.stderr)  # the traceback starts at <string>
        seen = json.loads(forked.stdout.splitlines()[0][len("RESULT:"):])
        assert seen["argv"] == ["-c", arg] and seen["path"] == ["", str(tmp_path), TESTS]
        assert not (seen["npu_compat"] or seen["sglang"] or seen["support"])
