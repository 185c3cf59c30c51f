"""``npu-compat scan``: a static audit of the torch.compile sites in a source tree.

Files are parsed with :mod:`ast`, never imported or run; stdlib only, so
the scanner works where torch is missing or broken.  Where things are:

* :mod:`.files`: which files, reading them safely, which can hold a site;
* :mod:`.bindings`: the binding model (module-level names, imports,
  ``global`` rebinding, lookups across the modules of the scan);
* :mod:`.devices`, :mod:`.evaluate`, :mod:`.backends`: what an expression
  is on NPU (device checks, ``disable=`` truth, where ``backend=`` sends NPU);
* :mod:`.api`, :mod:`.sites`: spelling the compile API and finding the sites;
* :mod:`.judge`, :mod:`.verdicts`: a site's verdict and reason;
* :mod:`.report`, :mod:`.render`, :mod:`.diff`: the report, its text
  renderings, and ``--diff``;
* :mod:`.engine`: one scan from paths to report; :mod:`.patch`: ``--patch``,
  upstream's remedy as a diff; :mod:`.cli`: the command.

The reference is docs/scan.md.
"""

from .diff import Diff
from .engine import scan
from .files import ScanError
from .report import Report, Site
from .verdicts import FAIL_POLICIES, GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN, VERDICTS


def main(argv=None):
    """``npu-compat scan`` (see :mod:`.cli`)."""
    from .cli import main as run

    return run(argv)


__all__ = [
    "Diff", "FAIL_POLICIES", "GUARDED", "NPU_BACKEND", "Report", "ScanError", "Site",
    "UNGUARDED", "UNKNOWN", "VERDICTS", "main", "scan",
]
