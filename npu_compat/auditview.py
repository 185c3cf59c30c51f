"""``npu-compat audit FILE...``: one view of the ``NPU_COMPAT_REPORT`` lines of
every process of a run (the engine, each rank's scheduler, every node).

Files are read line by line (a file of 100,000 lines is never held whole):
each line is folded into per-site counters and dropped.  A bad line (not
JSON, cut short by a process killed mid-write, of another report format)
is named on stderr and skipped; the rest is still merged.

The line format is ``report_format`` 2 (docs/audit.md).  Lines without the
field come from the writer of npu-compat 0.2.0 before the format had a
number: they are read too, and the fields they lack (``site``, ``eager_by``)
are derived from ``target`` and ``why``.
"""

import argparse
import json
import os
import stat
import sys

from npu_compat._cli_util import OneLineParser, one_line

PROG = "npu-compat audit"
FORMATS = (1, 2)  # 1: the unnumbered 0.2.0 line
FAIL_ON = ("fell-back", "compiled-called")
EAGER_BY = ("record", "setting", "fallback", "upstream")
SHOW_BAD = 5  # bad inputs named one by one on stderr; then a count
KEEP_BAD = 100  # bad inputs kept for --json
DEFAULT_BACKEND = "inductor"


class BadInput(Exception):
    """A line or a file that cannot be merged (the message names it)."""


# ---- one line -----------------------------------------------------------------------------------


def site_of(entry):
    """The ``module:qualname`` a user pins and ``scan --patch`` edits (format 1 lines lack it)."""
    site = entry.get("site")
    if isinstance(site, str) and ":" in site:
        return site
    target = entry.get("target") if isinstance(entry.get("target"), str) else "?"
    where = entry.get("where") if isinstance(entry.get("where"), str) else ""
    if ".<locals>" in target:
        # a closure: the function whose body made the compile call
        outer = target.rsplit(".<locals>", 1)[0]
        mod = where.split(":", 1)[0]
        if mod and outer.startswith(mod + "."):
            return f"{mod}:{outer[len(mod) + 1:]}"
        return outer
    parts = where.split(":")
    mod = parts[0]
    if mod and target.startswith(mod + "."):
        return f"{mod}:{target[len(mod) + 1:]}"
    if len(parts) == 3 and parts[1].isidentifier():
        # not a function of that module (a staticmethod object, an nn.Module): the body that compiled it
        return f"{mod}:{parts[1]}"
    return target


def eager_by_of(entry):
    """Who made a compilation eager: one of EAGER_BY, or None when compiled."""
    by = entry.get("eager_by")
    if by in EAGER_BY:
        return by
    if not entry.get("eager"):
        return None
    why = str(entry.get("why") or "")
    if why.startswith("upstream"):
        return "upstream"
    if "NPU_COMPAT_EAGER" in why:
        return "setting"
    if "fell back" in why or entry.get("fell_back"):
        return "fallback"
    return "record"


def parse_line(raw):
    """The record of one line (bytes without its newline); BadInput says why it is not one."""
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("not JSON") from None
    if not isinstance(rec, dict):
        raise BadInput("not a JSON object")
    fmt = rec.get("report_format", 1)
    if fmt not in FORMATS or isinstance(fmt, bool):
        raise BadInput(f"report_format {one_line(fmt)!s} (another npu-compat version: {one_line(rec.get('npu_compat'))})")
    if not isinstance(rec.get("compiles"), list) or not isinstance(rec.get("patches", []), list):
        raise BadInput("not an NPU_COMPAT_REPORT line (no \"compiles\" list)")
    return rec


# ---- the merge ----------------------------------------------------------------------------------


class SiteCount:
    __slots__ = ("site", "target", "where", "backends", "processes", "compiled", "eager", "eager_by", "called",
                 "compiled_called", "fell_back", "errors")

    def __init__(self, site, target, where):
        self.site, self.target, self.where = site, target, where
        self.backends = {}
        self.processes = self.compiled = self.eager = self.called = self.compiled_called = self.fell_back = 0
        self.eager_by = dict.fromkeys(EAGER_BY, 0)
        self.errors = {}  # (stage, type, message) -> processes

    @property
    def backend(self):
        return ", ".join(sorted(self.backends, key=lambda b: (-self.backends[b], b)))

    def as_dict(self):
        return {
            "site": self.site, "target": self.target, "where": self.where, "backend": self.backend,
            "processes": self.processes, "compiled": self.compiled, "eager": self.eager,
            "eager_by": dict(self.eager_by), "called": self.called, "compiled_called": self.compiled_called,
            "fell_back": self.fell_back,
            "errors": [{"stage": s, "type": t, "message": m, "processes": n}
                       for (s, t, m), n in sorted(self.errors.items(), key=lambda kv: -kv[1])],
        }  # fmt: skip


class Merge:
    """Every good line folded in; bad inputs listed."""

    def __init__(self):
        self.processes = 0
        self.unnumbered = 0  # format 1 lines
        self.hosts = {}  # host -> processes
        self.ranks = set()
        self.sites = {}  # (site, target) -> SiteCount
        self.records = {}  # name -> {state: processes}
        self.bad = []  # "FILE[:LINE]: why", the first KEEP_BAD
        self.bad_lines = 0
        self.bad_inputs = 0
        self.files_read = 0

    def add(self, rec):
        self.processes += 1
        if "report_format" not in rec:
            self.unnumbered += 1
        host = rec.get("host")
        host = host if isinstance(host, str) and host else "?"
        self.hosts[host] = self.hosts.get(host, 0) + 1
        if isinstance(rec.get("rank"), int):
            self.ranks.add(rec["rank"])
        for p in rec.get("patches") or ():
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                states = self.records.setdefault(p["name"], {})
                state = str(p.get("state"))
                states[state] = states.get(state, 0) + 1
        mine = {}  # this process's flags per site: a process counts once per site
        for e in rec["compiles"]:
            if not isinstance(e, dict):
                continue
            key = (site_of(e), str(e.get("target") or "?"))
            s = self.sites.get(key)
            if s is None:
                s = self.sites[key] = SiteCount(key[0], key[1], str(e.get("where") or "?"))
            flags = mine.setdefault(key, {"backends": set(), "errors": set()})
            backend = str(e.get("backend") or "?")
            flags["backends"].add(backend)
            by = eager_by_of(e)
            if by is None:
                flags["compiled"] = True
                if e.get("called") is True:
                    flags["called"] = True
                    if backend == DEFAULT_BACKEND:
                        flags["compiled_called"] = True
            else:
                flags["eager"] = True
                flags[by] = True
            if e.get("called") is True:
                flags["called"] = True
            fb = e.get("fell_back")
            if isinstance(fb, dict):
                flags["fell_back"] = True
                flags["errors"].add((str(fb.get("stage") or "?"), str(fb.get("type") or "?"),
                                     one_line(fb.get("message") or "")[:200]))  # fmt: skip
        for key, flags in mine.items():
            s = self.sites[key]
            s.processes += 1
            for b in flags["backends"]:
                s.backends[b] = s.backends.get(b, 0) + 1
            for field in ("compiled", "eager", "called", "compiled_called", "fell_back"):
                if flags.get(field):
                    setattr(s, field, getattr(s, field) + 1)
            for by in EAGER_BY:
                if flags.get(by):
                    s.eager_by[by] += 1
            for err in flags["errors"]:
                s.errors[err] = s.errors.get(err, 0) + 1

    def bad_input(self, where, why, line=True):
        if line:
            self.bad_lines += 1
        self.bad_inputs += 1
        if len(self.bad) < KEEP_BAD:  # a file of bad lines must not fill memory with messages
            self.bad.append(f"{where}: {why}")

    def read(self, path):
        """Fold in every line of ``path`` (``-``: standard input), one at a time."""
        shown = one_line(path)
        if path == "-":
            f = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
        else:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            except IsADirectoryError:
                return self.bad_input(shown, "is a directory", line=False)
            except OSError as exc:
                return self.bad_input(shown, one_line(exc.strerror or exc).lower(), line=False)
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode) or not stat.S_ISREG(st.st_mode):
                os.close(fd)  # a FIFO must not hang the audit
                return self.bad_input(shown, "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file",
                                      line=False)  # fmt: skip
            f = os.fdopen(fd, "rb")
        with f:
            self.files_read += 1
            n = 0
            try:
                for n, raw in enumerate(f, 1):
                    whole = raw.endswith(b"\n")
                    body = raw.strip()
                    if not body:
                        continue
                    try:
                        self.add(parse_line(body))
                    except BadInput as exc:
                        if not whole:
                            exc = "truncated (no newline at the end: a process killed mid-write?)"
                        self.bad_input(f"{shown}:{n}", exc)
            except OSError as exc:
                return self.bad_input(shown, f"read error after line {n}: {one_line(exc.strerror or exc)}", line=False)
            if n == 0:
                self.bad_input(shown, "empty", line=False)

    def failing(self, checks):
        """The sites that make one of ``checks`` (FAIL_ON items) fail."""
        out = []
        for s in self.sorted_sites():
            if ("fell-back" in checks and s.fell_back) or ("compiled-called" in checks and s.compiled_called):
                out.append(s)
        return out

    def sorted_sites(self):
        return sorted(self.sites.values(), key=lambda s: (-s.fell_back, -s.compiled_called, s.site, s.target))

    def to_dict(self):
        return {
            "processes": self.processes,
            "hosts": sorted(self.hosts),
            "ranks": sorted(self.ranks),
            "bad_lines": self.bad_lines,
            "bad": list(self.bad),  # the first KEEP_BAD
            "sites": [s.as_dict() for s in self.sorted_sites()],
            "records": {name: dict(states) for name, states in self.records.items()},
        }


# ---- renderings ---------------------------------------------------------------------------------

WIDTH = 100
_HEAD = f"  {'backend':<24} {'procs':>5} {'compiled':>8} {'eager':>5} {'record':>6} {'setting':>7} " \
        f"{'fallback':>8} {'upstream':>8} {'called':>6} {'fell-back':>9}"  # fmt: skip


def _fit(text, width=WIDTH):
    return text if len(text) <= width else text[: width - 3] + "..."


def table(m):
    hosts = ", ".join(f"{h} ({n})" for h, n in sorted(m.hosts.items()))
    ranks = f"; ranks {_spans(sorted(m.ranks))}" if m.ranks else ""
    lines = [_fit(f"{m.processes} processes on {len(m.hosts)} host(s): {hosts}{ranks}"), ""]
    lines.append(f"sites ({len(m.sites)}): counts are processes; eager by record, setting, fallback or upstream")
    lines.append(_HEAD)
    for s in m.sorted_sites():
        lines.append(_fit(s.site if _same(s) else f"{s.site}  ({_compiled_name(s)})"))
        by = s.eager_by
        lines.append(
            f"  {_fit(s.backend, 24):<24} {s.processes:>5} {s.compiled:>8} {s.eager:>5} {by['record']:>6} "
            f"{by['setting']:>7} {by['fallback']:>8} {by['upstream']:>8} {s.called:>6} {s.fell_back:>9}"
        )
        for (stage, typ, msg), n in sorted(s.errors.items(), key=lambda kv: -kv[1])[:3]:
            lines.append(_fit(f"    fell back at {stage} in {n} process(es): {typ}: {msg}"))
    if not m.sites:
        lines.append("  (no torch.compile site was recorded)")
    lines += ["", "records (states across processes):"]
    for name, states in m.records.items():
        lines.append(_fit(f"  {name:<28} " + ", ".join(f"{st} {n}" for st, n in sorted(states.items()))))
    if not m.records:
        lines.append("  (none recorded)")
    if m.bad_inputs:
        lines += ["", f"bad input: {m.bad_inputs} ({m.bad_lines} lines); see stderr"]
    return "\n".join(lines)


def _compiled_name(s):
    """What was compiled at a site, short: ``<locals>._mix`` for a closure of the site's function."""
    head = s.site.replace(":", ".", 1) + "."
    return s.target[len(head):] if s.target.startswith(head) else s.target


def _same(s):
    """Whether the site name says what was compiled (target == site with a dot)."""
    return s.target == s.site.replace(":", ".", 1)


def _spans(nums):
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def eager_list(m, sources):
    """The sites that fell back, in the file format of ``NPU_COMPAT_EAGER=@PATH``."""
    lines = [
        "# npu-compat audit --eager-list: the sites that fell back on NPU; pin them eager with",
        "# NPU_COMPAT_EAGER=@THIS_FILE (one module:qualname per line, '#' starts a comment)",
        f"# from {m.processes} processes in: {one_line(' '.join(sources))}",
    ]
    done = set()
    for s in m.sorted_sites():
        if not s.fell_back or s.site in done:
            continue
        done.add(s.site)
        same = [x for x in m.sites.values() if x.site == s.site and x.fell_back]
        errs = {}
        for x in same:
            for key, n in x.errors.items():
                errs[key] = errs.get(key, 0) + n
        n = sum(x.fell_back for x in same)
        if errs:
            (stage, typ, msg), _ = max(errs.items(), key=lambda kv: kv[1])
            why = f"{typ}: {msg} (at {stage})"
        else:
            why = "fell back"
        lines.append(_fit(f"# {why}; {n} of {m.processes} processes", 200))
        # a site found compiled under another module's name cannot be pinned by module:qualname
        lines.append(s.site if ":" in s.site else f"# (no module:qualname for {s.site}; name it yourself)")
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------------


_EPILOG = """\
Each FILE is the JSON lines one NPU_COMPAT_REPORT file gathered (one line per
process; several nodes' files may be given, or - for stdin).  A bad line or
an unreadable file is named on stderr and skipped; what was read is shown.

exit status: 0 fine, 1 --fail-on found something, 2 bad usage or no report
line could be read at all.

examples:
  npu-compat audit /shared/npu-compat-report.jsonl
  npu-compat audit --fail-on fell-back node*/report.jsonl
  npu-compat audit --eager-list report.jsonl > eager.txt  # for @eager.txt
"""


def _parser():
    p = OneLineParser(
        prog=PROG,
        description=(
            "Merge NPU_COMPAT_REPORT files (every process, every node) into one\n"
            "view of the compile sites: compiled, made eager, fell back."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="NPU_COMPAT_REPORT files (JSON lines; - for stdin)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument(
        "--eager-list", action="store_true",
        help="print the sites that fell back, as a file for NPU_COMPAT_EAGER=@FILE",
    )
    p.add_argument(
        "--fail-on", default="", metavar="LIST",
        help="comma list of fell-back, compiled-called (compiled with the default backend and called on NPU): "
             "exit 1 when a site matches",
    )  # fmt: skip
    return p


def main(argv=None):
    """``npu-compat audit``; returns the exit status (0, 1 for --fail-on, 2 when nothing could be read)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    checks = {c.strip() for c in args.fail_on.split(",") if c.strip()}
    unknown = sorted(checks - set(FAIL_ON))
    if unknown:
        parser.error(f"--fail-on: unknown {', '.join(unknown)} (choose from {', '.join(FAIL_ON)})")
    m = Merge()
    unread = 0  # files that could not be opened or read: --fail-on cannot vouch for them
    for path in args.files:
        before = m.files_read
        m.read(path)
        unread += m.files_read == before
    for line in m.bad[:SHOW_BAD]:
        sys.stderr.write(f"{PROG}: skipped {line}\n")
    if m.bad_inputs > SHOW_BAD:
        sys.stderr.write(f"{PROG}: skipped {m.bad_inputs - SHOW_BAD} more bad input(s) ({m.bad_lines} bad lines in all)\n")
    if m.unnumbered:
        sys.stderr.write(
            f"{PROG}: note: {m.unnumbered} line(s) without report_format (npu-compat 0.2.0's first writer): "
            "site and eager_by derived from target and why\n"
        )
    if m.processes == 0:
        sys.stderr.write(f"{PROG}: error: no report line could be read\n")
        return 2
    if args.json:
        out = json.dumps(m.to_dict(), indent=2)
    elif args.eager_list:
        out = eager_list(m, args.files)
    else:
        out = table(m)
    try:
        print(out)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    failing = m.failing(checks)
    for s in failing[:SHOW_BAD]:
        what = "fell back" if s.fell_back and "fell-back" in checks else "compiled and called"
        sys.stderr.write(f"{PROG}: --fail-on: {s.site} {what}\n")
    if checks and unread:
        sys.stderr.write(f"{PROG}: --fail-on: {unread} file(s) could not be read\n")
    return 1 if failing or (checks and unread) else 0
