"""``npu-compat audit FILE...``: one view of the ``NPU_COMPAT_REPORT`` lines of
every process of a run (the engine, each rank's scheduler, every node).

Files are read line by line (a file of 100,000 lines is never held whole).
A process (``report_format`` 3) writes a line each time its state changes
and one at exit; it is one process by host, pid and start time, and only
its latest line counts (kept as small per-site flags until the end).
Lines of formats 1 and 2 were written at exit only: each is a process of
its own, folded in at once.  Every line is checked before any of it is
used: a bad one (not JSON, nested too deep, a NaN, a field of the wrong
type, cut short by a process killed mid-write, of another report format)
is named on stderr and skipped; the rest is still merged.

Lines without ``report_format`` come from the writer of npu-compat 0.2.0
before the format had a number: they are read too, and the fields they lack
(``site``, ``eager_by``) are derived from ``target`` and ``why``.
"""

import argparse
import json
import math
import os
import re
import stat
import sys

from npu_compat._cli_util import OneLineParser, one_line

PROG = "npu-compat audit"
FORMATS = (1, 2, 3)  # 1: the unnumbered 0.2.0 line; 3: a line per change, the last at exit
FAIL_ON = ("fell-back", "compiled-called")
EAGER_BY = ("record", "setting", "fallback", "upstream")
SHOW_BAD = 5  # bad inputs named one by one on stderr; then a count
KEEP_BAD = 100  # bad inputs kept for --json
DEFAULT_BACKEND = "inductor"
MAX_LINE = 8 << 20  # bytes; a process's record is tens of KB
# module:qualname as NPU_COMPAT_EAGER takes it (audit._site): dotted identifiers, a qualname of 1-2 parts
SITE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


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


def well_formed_site(site):
    """Whether ``site`` is a ``module:qualname`` NPU_COMPAT_EAGER=@FILE takes (ASCII identifiers only)."""
    return isinstance(site, str) and SITE_RE.fullmatch(site) is not None and site.isascii()


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


_STR = (str,)
_OPT_STR = (str, type(None))
_OPT_BOOL = (bool, type(None))
# field -> allowed types, for the record and for each entry of "compiles"
_RECORD_FIELDS = {"host": _OPT_STR, "pid": (int,), "ppid": (int, type(None)), "seq": (int,), "exit": (bool,),
                  "rank": (int, type(None)), "local_rank": (int, type(None)), "world_size": (int, type(None)),
                  "route": _OPT_STR, "npu_compat": _OPT_STR, "start": (int, float, type(None)),
                  "time": (int, float, type(None))}  # fmt: skip
_ENTRY_FIELDS = {"site": _OPT_STR, "target": _OPT_STR, "where": _OPT_STR, "backend": _OPT_STR, "eager": _OPT_BOOL,
                 "eager_by": _OPT_STR, "why": _OPT_STR, "called": _OPT_BOOL, "when": _OPT_STR,
                 "fell_back": (dict, type(None)), "speed": (dict, type(None))}  # fmt: skip
_NUM = (int, float, type(None))
_SPEED_FIELDS = {"compiled_us": _NUM, "eager_us": _NUM, "samples": (int, type(None)), "picked": _OPT_STR,
                 "faster": _OPT_STR, "regime": _OPT_STR, "timer": _OPT_STR}  # fmt: skip
SLOWER = 1.10  # compiled/eager at or above this: "measured slower compiled" (NPU_COMPAT_SPEED's margin)
_NAMES = ("site", "target", "where", "backend", "host")  # shown as names: no control characters


def _check(obj, fields, what):
    for name, types in fields.items():
        if name not in obj:
            continue
        v = obj[name]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise BadInput(f"{what}{name} is {type(v).__name__}, not {' or '.join(t.__name__ for t in types)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise BadInput(f"{what}{name} is not finite")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 1 << 63:
            raise BadInput(f"{what}{name} is out of range")
        if name in _NAMES and isinstance(v, str) and (len(v) > 1000 or not v.isprintable()):
            raise BadInput(f"{what}{name} holds control characters or is over 1000 characters")


def parse_line(raw):
    """The record of one line (bytes without its newline); BadInput says why it is not one.

    Every field the merge uses is checked here (type, range, characters), so
    no bad line can stop the merge or reach an output unchecked.
    """
    if len(raw) > MAX_LINE:
        raise BadInput(f"longer than {MAX_LINE} bytes")
    try:
        rec = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        why = {UnicodeDecodeError: "not UTF-8", RecursionError: "nested too deep", MemoryError: "too big"}.get(
            type(exc), "not JSON")
        raise BadInput(why) from None
    if not isinstance(rec, dict):
        raise BadInput("not a JSON object")
    fmt = rec.get("report_format", 1)
    if fmt not in FORMATS or isinstance(fmt, bool) or not isinstance(fmt, int):
        raise BadInput(f"report_format {one_line(fmt)[:40]!s} (another npu-compat version: "
                       f"{one_line(rec.get('npu_compat'))[:40]})")  # fmt: skip
    if not isinstance(rec.get("compiles"), list) or not isinstance(rec.get("patches", []), list):
        raise BadInput("not an NPU_COMPAT_REPORT line (no \"compiles\" list)")
    if fmt >= 3:
        for need in ("pid", "seq", "exit", "start"):
            if need not in rec:
                raise BadInput(f"report_format 3 without {need}")
    _check(rec, _RECORD_FIELDS, "")
    for i, p in enumerate(rec.get("patches") or ()):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(p.get("state", ""), str):
            raise BadInput(f"patches[{i}] is not {{name, state}}")
        if not (p["name"] + str(p.get("state", ""))).isprintable():
            raise BadInput(f"patches[{i}] holds control characters")
    for i, e in enumerate(rec["compiles"]):
        if not isinstance(e, dict):
            raise BadInput(f"compiles[{i}] is not an object")
        _check(e, _ENTRY_FIELDS, f"compiles[{i}].")
        fb = e.get("fell_back")
        if isinstance(fb, dict):
            _check(fb, {"stage": _OPT_STR, "type": _OPT_STR, "message": _OPT_STR}, f"compiles[{i}].fell_back.")
        sp = e.get("speed")
        if isinstance(sp, dict):
            _check(sp, _SPEED_FIELDS, f"compiles[{i}].speed.")
    return rec


# ---- the merge ----------------------------------------------------------------------------------


class SiteCount:
    __slots__ = ("site", "target", "where", "backends", "processes", "compiled", "eager", "eager_by", "called",
                 "compiled_called", "fell_back", "errors", "speeds")

    def __init__(self, site, target, where):
        self.site, self.target, self.where = site, target, where
        self.backends = {}
        self.processes = self.compiled = self.eager = self.called = self.compiled_called = self.fell_back = 0
        self.eager_by = dict.fromkeys(EAGER_BY, 0)
        self.errors = {}  # (stage, type, message) -> processes
        self.speeds = []  # (compiled_us, eager_us, picked) per process that measured it (NPU_COMPAT_SPEED)

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
            "speed": self.speed(),
        }  # fmt: skip

    def speed(self):
        """The processes' measurements, merged: medians of each, their ratio, how many picked eager."""
        if not self.speeds:
            return None
        import statistics

        c = statistics.median(x[0] for x in self.speeds)
        e = statistics.median(x[1] for x in self.speeds)
        return {"processes": len(self.speeds), "compiled_us": round(c, 3), "eager_us": round(e, 3),
                "ratio": round(c / e, 3) if e > 0 else None,
                "picked_eager": sum(1 for x in self.speeds if x[2] == "eager")}  # fmt: skip

    def slower(self, threshold=SLOWER):
        sp = self.speed()
        return bool(sp and sp["ratio"] is not None and sp["ratio"] >= threshold)


class Merge:
    """Every good line folded in (each process's latest only); bad inputs listed."""

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
        self.live = {}  # (host, pid, start) -> the latest summary of a format-3 process, until finish()
        self.process_list = []  # format-3 processes once finished: host, pid, start, lines, exit, ...

    def add(self, rec):
        """Fold in one record: at once (formats 1 and 2: one line per process), or as the
        latest state of its process (format 3: folded in by :meth:`finish`)."""
        summary = self._summary(rec)
        if rec.get("report_format", 1) < 3:
            self._fold(summary)
            return
        key = (summary["host"], rec["pid"], rec["start"])
        old = self.live.get(key)
        summary["lines"] = 1 + (old["lines"] if old else 0)
        if old is None or rec["seq"] >= old["seq"]:  # ties: the later line
            self.live[key] = summary
        else:
            old["lines"] = summary["lines"]

    def finish(self):
        """Fold in each process's latest state.  Idempotent; the views call it."""
        for (host, pid, start), summary in self.live.items():
            self._fold(summary)
            self.process_list.append({"host": host, "pid": pid, "start": start, "lines": summary["lines"],
                                      "seq": summary["seq"], "exit": summary["exit"], "rank": summary["rank"],
                                      "argv": summary["argv"]})  # fmt: skip
        self.live = {}
        return self

    @property
    def not_exited(self):
        return sum(1 for p in self.process_list if not p["exit"])

    def _summary(self, rec):
        """What the merge keeps of one line: small flags per site, never the record itself."""
        host = rec.get("host")
        argv = rec.get("argv")
        out = {
            "host": host if isinstance(host, str) and host else "?",
            "unnumbered": "report_format" not in rec,
            "rank": rec.get("rank"),
            "seq": rec.get("seq"),
            "exit": rec.get("exit"),
            "argv": [one_line(a)[:200] for a in argv[:3]] if isinstance(argv, list) else None,
            "states": [(p["name"], str(p.get("state"))) for p in rec.get("patches") or ()],
        }
        mine = {}  # this process's flags per site: a process counts once per site
        for e in rec["compiles"]:
            key = (site_of(e), str(e.get("target") or "?"))
            flags = mine.get(key)
            if flags is None:
                flags = mine[key] = {"where": str(e.get("where") or "?"), "backends": set(), "errors": set()}
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
            sp = e.get("speed")
            if isinstance(sp, dict) and isinstance(sp.get("compiled_us"), (int, float)) \
                    and isinstance(sp.get("eager_us"), (int, float)) and "speed" not in flags:
                flags["speed"] = (float(sp["compiled_us"]), float(sp["eager_us"]), sp.get("picked"))
            fb = e.get("fell_back")
            if isinstance(fb, dict):
                flags["fell_back"] = True
                flags["errors"].add((one_line(fb.get("stage") or "?")[:40], one_line(fb.get("type") or "?")[:100],
                                     one_line(fb.get("message") or "")[:200]))  # fmt: skip
        out["sites"] = mine
        return out

    def _fold(self, summary):
        self.processes += 1
        self.unnumbered += summary["unnumbered"]
        self.hosts[summary["host"]] = self.hosts.get(summary["host"], 0) + 1
        if isinstance(summary["rank"], int):
            self.ranks.add(summary["rank"])
        for name, state in summary["states"]:
            states = self.records.setdefault(name, {})
            states[state] = states.get(state, 0) + 1
        for key, flags in summary["sites"].items():
            s = self.sites.get(key)
            if s is None:
                s = self.sites[key] = SiteCount(key[0], key[1], flags["where"])
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
            if "speed" in flags and len(s.speeds) < 100000:
                s.speeds.append(flags["speed"])

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
                while True:
                    raw = f.readline(MAX_LINE + 1)
                    if not raw:
                        break
                    n += 1
                    whole = raw.endswith(b"\n")
                    if not whole and len(raw) > MAX_LINE:
                        while raw and not raw.endswith(b"\n"):  # skip the rest of it, a piece at a time
                            raw = f.readline(MAX_LINE)
                        self.bad_input(f"{shown}:{n}", f"longer than {MAX_LINE} bytes")
                        continue
                    body = raw.strip()
                    if not body:
                        continue
                    try:
                        self.add(parse_line(body))
                    except BadInput as exc:
                        if not whole:
                            exc = "truncated (no newline at the end: a process killed mid-write?)"
                        self.bad_input(f"{shown}:{n}", exc)
                    except Exception as exc:  # never expected: still named, and the merge goes on
                        self.bad_input(f"{shown}:{n}", f"unreadable ({type(exc).__name__})")
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
        self.finish()
        return sorted(self.sites.values(), key=lambda s: (-s.fell_back, -s.compiled_called, s.site, s.target))

    def to_dict(self):
        self.finish()
        return {
            "processes": self.processes,
            "not_exited": self.not_exited,
            "process_list": list(self.process_list),  # processes of format 3 (a line per change)
            "hosts": sorted(self.hosts),
            "ranks": sorted(self.ranks),
            "bad_lines": self.bad_lines,
            "bad": list(self.bad),  # the first KEEP_BAD
            "sites": [s.as_dict() for s in self.sorted_sites()],
            "records": {name: dict(states) for name, states in self.records.items()},
        }


# ---- renderings ---------------------------------------------------------------------------------

WIDTH = 80
# 2 + 12 + 9 columns = 80
_HEAD = f"  {'backend':<12} {'procs':>5} {'compiled':>8} {'eager':>5} {'record':>6} {'setting':>7} " \
        f"{'fallback':>8} {'upstream':>8} {'called':>6} {'fell':>4}"  # fmt: skip


def _fit(text, width=WIDTH):
    return text if len(text) <= width else text[: width - 3] + "..."


def short_name(name, width):
    """A long ``module:qualname`` cut from the left at a '.' of the module: ``...fused_moe:_swiglu``.

    The qualname and as much of the module as fits stay; the full name is in --json."""
    if len(name) <= width:
        return name
    mod, sep, rest = name.partition(":")
    parts = mod.split(".")
    for i in range(1, len(parts)):
        cand = "..." + ".".join(parts[i:]) + sep + rest
        if len(cand) <= width:
            return cand
    return _fit("..." + sep + rest if sep else name, width)


def table(m):
    m.finish()
    hosts = ", ".join(f"{one_line(h)} ({n})" for h, n in sorted(m.hosts.items()))
    ranks = f"; ranks {_spans(sorted(m.ranks))}" if m.ranks else ""
    lines = [_fit(f"{m.processes} processes on {len(m.hosts)} host(s): {hosts}{ranks}")]
    if m.not_exited:
        lines.append(f"{m.not_exited} of them without an exit line (still running, or killed: their last state)")
    lines.append("")
    lines.append(_fit(f"sites ({len(m.sites)}): counts are processes; eager by record, setting, fallback or upstream"))
    lines.append(_HEAD)
    for s in m.sorted_sites():
        site = one_line(s.site)
        if _same(s):
            lines.append(short_name(site, WIDTH))
        else:
            extra = f"  ({one_line(_compiled_name(s))})"
            lines.append(short_name(site, WIDTH) if len(site) + 8 > WIDTH else _fit(site + extra))
        by = s.eager_by
        lines.append(
            f"  {_fit(one_line(s.backend), 12):<12} {s.processes:>5} {s.compiled:>8} {s.eager:>5} {by['record']:>6} "
            f"{by['setting']:>7} {by['fallback']:>8} {by['upstream']:>8} {s.called:>6} {s.fell_back:>4}"
        )
        for (stage, typ, msg), n in sorted(s.errors.items(), key=lambda kv: -kv[1])[:3]:
            lines.append(_fit(f"    fell back at {stage} in {n} process(es): {typ}: {msg}"))
        sp = s.speed()
        if sp:
            ratio = f" ({sp['ratio']:.2f}x)" if sp["ratio"] is not None else ""
            picked = f"; picked eager in {sp['picked_eager']}" if sp["picked_eager"] else ""
            lines.append(_fit(f"    speed: compiled {sp['compiled_us']:.1f} us, eager {sp['eager_us']:.1f} us{ratio} "
                              f"in {sp['processes']} process(es){picked}"))  # fmt: skip
    if not m.sites:
        lines.append("  (no torch.compile site was recorded)")
    lines += ["", "records (states across processes):"]
    for name, states in m.records.items():
        lines.append(_fit(f"  {one_line(name):<28} " + ", ".join(f"{one_line(st)} {n}" for st, n in sorted(states.items()))))
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


def eager_list(m, sources, rejected=None, slower=SLOWER):
    """The sites that fell back, or were measured slower compiled (``slower``: compiled/eager at or
    above it; None: not those), in the file format of ``NPU_COMPAT_EAGER=@PATH``.

    Only well-formed ``module:qualname`` lines are written; any other name is
    added to ``rejected`` (and stays a comment)."""
    rejected = [] if rejected is None else rejected
    lines = [
        "# npu-compat audit --eager-list: the sites that fell back on NPU; pin them eager with",
        "# NPU_COMPAT_EAGER=@THIS_FILE (one module:qualname per line, '#' starts a comment)",
        f"# from {m.processes} processes in: {one_line(' '.join(sources))}",
    ]
    done = set()
    for s in m.sorted_sites():
        if s.site in done:
            continue
        if not s.fell_back:
            if slower is None or not s.slower(slower):
                continue
            done.add(s.site)
            sp = s.speed()
            lines.append(_fit(one_line(
                f"# measured slower compiled: {sp['compiled_us']:.1f} us against {sp['eager_us']:.1f} us eager "
                f"({sp['ratio']:.2f}x, NPU_COMPAT_SPEED) in {sp['processes']} of {m.processes} processes"), 200))
            if well_formed_site(s.site):
                lines.append(s.site)
            else:
                lines.append(f"# (left out: {one_line(s.site)[:150]!r} is not a module:qualname)")
                rejected.append(s.site)
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
        lines.append(_fit(one_line(f"# {why}; {n} of {m.processes} processes"), 200))
        if well_formed_site(s.site):
            lines.append(s.site)
        elif ":" not in s.site and s.site.isprintable() and "\n" not in s.site:
            # a site found compiled under another module's name cannot be pinned by module:qualname
            lines.append(_fit(f"# (no module:qualname for {s.site}; name it yourself)", 200))
        else:
            lines.append(f"# (left out: {one_line(s.site)[:150]!r} is not a module:qualname)")
            rejected.append(s.site)
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
  npu-compat audit --eager-list --slower 1.5 report.jsonl  # also 1.5x slower
"""


def _ratio(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value == 0 or 1.0 <= value < 1e6):
        raise argparse.ArgumentTypeError(f"not a ratio of 1 or more (or 0): {text!r}")
    return value


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
        help="print the sites that fell back or were measured slower compiled, as a file for "
             "NPU_COMPAT_EAGER=@FILE",
    )  # fmt: skip
    p.add_argument(
        "--slower", type=_ratio, default=SLOWER, metavar="RATIO",
        help=f"with --eager-list, also the sites NPU_COMPAT_SPEED measured at least RATIO times slower "
             f"compiled than eager (default {SLOWER}; 0 leaves them out)",
    )  # fmt: skip
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
    m.finish()
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
        rejected = []
        out = eager_list(m, args.files, rejected, args.slower or None)
        for site in rejected[:SHOW_BAD]:
            sys.stderr.write(f"{PROG}: --eager-list: left out {one_line(site)[:200]!r}: not a module:qualname\n")
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
