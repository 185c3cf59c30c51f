#!/usr/bin/env python3
"""Check every guard's ``versions`` claim against the released sglang wheels.

    python scripts/check_releases.py CACHE_DIR [--releases 0.5.13,0.5.23] [--jobs 4]

Each release from 0.5.11 to 0.5.23 is installed once as a ``--target`` tree
(``pip install --no-deps --no-compile --target CACHE_DIR/sglang-X sglang==X``;
kept there for the next run).  Nothing is imported or run: for each guard of
the registry and each release, two readings of the files must agree with
the record's ``versions``:

* the site itself, read here with :mod:`ast`: the record's module file
  defines ``qualname`` and it is compiled on NPU (scope ``site``: a
  ``torch.compile`` decorator without ``disable=`` naming an NPU flag; scope
  ``calls``: such a ``torch.compile`` call inside its body);
* ``npu-compat scan``: a site of that release is covered by the record and
  its verdict is ``unguarded`` or ``npu-backend``.

Exit 0 when every claim holds, 1 when one does not (each mismatch on one
line), 2 when a release cannot be installed.  Implementation records
(``Patch``) carry no ``versions`` and are not checked.  Timing on this
machine: docs/support.md.
"""

import argparse
import ast
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from npu_compat import registry  # noqa: E402
from npu_compat.scan import NPU_BACKEND, UNGUARDED, scan  # noqa: E402

RELEASES = (
    "0.5.11", "0.5.12", "0.5.12.post1", "0.5.13", "0.5.13.post1", "0.5.14", "0.5.15", "0.5.15.post1",
    "0.5.16", "0.5.17", "0.5.18", "0.5.19", "0.5.20", "0.5.21", "0.5.22", "0.5.23",
)  # fmt: skip
COMPILE_APIS = ("torch.compile", "torch.compiler.compile")


def tree_of(cache, release):
    return os.path.join(cache, f"sglang-{release}")


def install(cache, release):
    """Install one release as a tree in the cache (atomically: a half-installed tree never counts)."""
    tree = tree_of(cache, release)
    if os.path.isfile(os.path.join(tree, "sglang", "__init__.py")):
        return release, None
    part = os.path.join(cache, f".part-sglang-{release}")
    shutil.rmtree(part, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--disable-pip-version-check",
           "--target", part, f"sglang=={release}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(part, ignore_errors=True)
        return release, (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
    os.replace(part, tree)
    return release, None


# --- the site, read with ast -------------------------------------------------------------


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _compile_call(node):
    """For ``torch.compile(...)`` or a bare ``@torch.compile``: 'compiled' or 'guarded' (disable= an NPU flag)."""
    func = node.func if isinstance(node, ast.Call) else node
    if _dotted(func) not in COMPILE_APIS:
        return None
    for kw in getattr(node, "keywords", ()):
        if kw.arg == "disable" and "npu" in ast.unparse(kw.value).lower():
            return "guarded"
    return "compiled"


def _module_file(tree, module):
    base = os.path.join(tree, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _find_def(body, qualname):
    head, _, tail = qualname.partition(".")
    found = None
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == head:
            found = node  # the last definition wins, as at run time
    if found is None or not tail:
        return found
    return _find_def(found.body, tail) if isinstance(found, ast.ClassDef) else None


def site_state(tree, rec):
    """'absent', 'plain', 'guarded' or 'compiled': the record's site in this release's files."""
    path = _module_file(tree, rec.module)
    if path is None:
        return "absent"
    with open(path, encoding="utf-8") as f:
        node = _find_def(ast.parse(f.read(), path).body, rec.qualname)
    if node is None or isinstance(node, ast.ClassDef):
        return "absent"
    if rec.scope == "calls":
        calls = [_compile_call(n) for n in ast.walk(node) if isinstance(n, ast.Call)]
    else:
        calls = [_compile_call(d) for d in node.decorator_list]
    calls = [c for c in calls if c]
    if "compiled" in calls:
        return "compiled"
    return "guarded" if calls else "plain"


# --- scan's reading ------------------------------------------------------------------------


def scan_covered(tree):
    """{record name} of the records scan finds covering a site compiled on NPU in this tree."""
    report = scan([os.path.join(tree, "sglang")])
    out = set()
    for site in report.sites:
        if site.covered_by and site.verdict in (UNGUARDED, NPU_BACKEND):
            out.add(site.covered_by.split(" ")[0])
    return out


def check(trees, records):
    """Mismatch lines for ``trees`` ({release: path}) and guard ``records``; also the table rows."""
    states = {r: {} for r in trees}
    covered = {}
    for release, tree in trees.items():
        covered[release] = scan_covered(tree)
        for rec in records:
            states[release][rec.name] = site_state(tree, rec)
    problems, rows = [], []
    for rec in records:
        claimed = [r for r in trees if registry.claims(rec.versions, r)]
        compiled = [r for r in trees if states[r][rec.name] == "compiled"]
        by_scan = [r for r in trees if rec.name in covered[r]]
        rows.append((rec.name, rec.versions, compiled))
        if compiled != claimed:
            problems.append(
                f"{rec.name}: versions says {rec.versions!r} ({_span(claimed)}), the site is compiled on NPU in "
                f"{_span(compiled)} ({', '.join(f'{r}: {states[r][rec.name]}' for r in trees if r not in compiled)})"
            )
        if by_scan != compiled:
            problems.append(f"{rec.name}: scan covers it in {_span(by_scan)}, the site is compiled in {_span(compiled)}")
    return problems, rows


def _span(releases):
    return ", ".join(releases) if releases else "no release"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", help="directory for the release trees (kept between runs)")
    parser.add_argument("--releases", default=",".join(RELEASES), help="comma-separated (default: all)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel pip installs (default 4)")
    args = parser.parse_args(argv)
    releases = [r.strip() for r in args.releases.split(",") if r.strip()]
    start = time.monotonic()
    os.makedirs(args.cache, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        failed = [(r, e) for r, e in pool.map(lambda r: install(args.cache, r), releases) if e]
    for release, error in failed:
        print(f"check_releases: cannot install sglang {release}: {error}", file=sys.stderr)
    if failed:
        return 2
    installed = time.monotonic()
    records = [r for r in registry.all_patches() if r.kind == "guard"]
    problems, rows = check({r: tree_of(args.cache, r) for r in releases}, records)
    for name, versions, compiled in rows:
        print(f"{name:28} claims {versions!r}; compiled in {len(compiled)} of {len(releases)} releases checked")
    for line in problems:
        print("MISMATCH " + line)
    end = time.monotonic()
    print(
        f"check_releases: {len(records)} guards x {len(releases)} releases: "
        f"{'ok' if not problems else f'{len(problems)} mismatches'} "
        f"(install {installed - start:.0f} s, check {end - installed:.0f} s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
