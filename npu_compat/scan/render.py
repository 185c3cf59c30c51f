"""Text renderings of a :class:`~.report.Report` and of a :class:`~.diff.Diff`
(``--json`` is their ``to_dict()``), laid out for 80 columns.

Paths are shown below the directory they all share (said once, at the top);
each site is one row (line, target, verdict, covered by) with its reason on
the lines under it, indented.  Only a path or name with no place to cut
(after a '/' or '.') can stay longer than the width.
"""

import os

from npu_compat._cli_util import wrap

from .verdicts import GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN, VERDICTS

WIDTH = 80
REASON_INDENT = " " * 8


def plural(n, word, many=None):
    return f"{n} {word if n == 1 else (many or word + 's')}"


def counts_text(c):
    return f"{c[GUARDED]} guarded, {c[NPU_BACKEND]} npu-backend, {c[UNGUARDED]} unguarded, {c[UNKNOWN]} unknown"


def summary_lines(report):
    """The summary: files, sites (serving code and tests apart), coverage, time."""
    s = report.summary()
    files = (
        f"npu-compat scan: {plural(s['files_read'], 'file')} read ({s['files_parsed']} parsed, "
        f"{s['files_skipped']} cannot hold a site, {s['files_failed'] - s['files_unreadable']} failed)"
    )
    if s["files_unreadable"]:
        files += f", {s['files_unreadable']} unreadable"
    lines = wrap(files, WIDTH, first="", indent="  ")
    lines += wrap(f"{plural(s['sites'], 'torch.compile site')}: {counts_text(s)}", WIDTH, first="", indent="  ")
    if s["sites_in_tests"]:
        serving = {v: s[v] - s["in_tests"][v] for v in VERDICTS}
        lines += wrap(
            f"in serving code: {s['sites'] - s['sites_in_tests']} ({counts_text(serving)})", WIDTH,
            first="  ", indent="    ",
        )
        lines += wrap(
            f"under test/ and benchmark/ directories: {s['sites_in_tests']} ({counts_text(s['in_tests'])})",
            WIDTH, first="  ", indent="    ",
        )
    if s["unguarded_eager_backend"]:
        lines += wrap(
            f'backend="eager" (no code generated): {s["unguarded_eager_backend"]} of the {s[UNGUARDED]} unguarded',
            WIDTH, first="  ", indent="    ",
        )
    opt_in = s["unguarded_covered_opt_in"]
    npu_opt_in = s["npu_backend_covered"] - s["npu_backend_covered_default"]
    covered = (
        f"covered by npu_compat: {s['unguarded_covered_default']} of the {s[UNGUARDED]} unguarded and "
        f"{s['npu_backend_covered_default']} of the {s[NPU_BACKEND]} npu-backend by default"
    )
    more = [f"{n} more {w}" for n, w in ((opt_in, "unguarded"), (npu_opt_in, "npu-backend")) if n]
    if more:
        covered += f"; {' and '.join(more)} by opt-in records (off unless NPU_COMPAT_EAGER names them)"
    lines += wrap(covered, WIDTH, first="", indent="  ")
    lines.append(f"scanned in {report.elapsed:.2f} s")
    return lines


def summary_line(report):
    """The summary as one line (for a log)."""
    return " ".join(line.strip() for line in summary_lines(report))


def _base(paths):
    """The directory every path shares ('' when none or only one file), with a trailing '/'."""
    dirs = {os.path.dirname(p) for p in paths}
    if len(paths) < 2 or not dirs or "" in dirs:
        return ""
    try:
        base = os.path.commonpath(list(dirs))
    except ValueError:
        return ""
    return base.rstrip("/") + "/" if base and base != "/" else ""


def _rows(rows):
    """Rows of (line, target, verdict, covered, reason) for 80 columns."""
    target_w = min(max((len(r[1]) for r in rows), default=6), 36)
    out = []
    for line, target, verdict, covered, reason in rows:
        row = f"  {line:<5} {target:<{target_w}}  {verdict:<11}  {covered}"
        if len(row) <= WIDTH:
            out.append(row.rstrip())
        else:
            head = f"  {line:<5} {target}"
            if len(head) + 2 + len(verdict) <= WIDTH:
                out.append(f"{head}  {verdict}")
            else:
                out += wrap(target, WIDTH, first=f"  {line:<5} ", indent="        ")
                out.append(f"{REASON_INDENT}{verdict}")
            if covered:
                out += wrap(f"covered by {covered}", WIDTH, indent=REASON_INDENT)
        out += wrap(reason, WIDTH, indent=REASON_INDENT)
    return out


def report_table(report):
    lines = summary_lines(report)
    if not report.sites:
        lines.append("no torch.compile sites found")
        _errors(report, lines)
        return "\n".join(lines)
    base = _base([s.path for s in report.sites])
    by_file = {}
    for s in report.sites:
        by_file.setdefault((s.path, s.module), []).append(
            (str(s.line), s.target, s.verdict, s.covered_by or "", s.reason)
        )
    lines.append("")
    if base:
        lines += wrap(f"paths below {base}", WIDTH, indent="  ")
    lines.append("  line  target, verdict, covered by; the reason below")
    for (path, module), rows in by_file.items():
        shown = path[len(base):] if base and path.startswith(base) else path
        lines.append("")
        title = f"{shown}  [{module}]" if module else shown
        lines += [title] if len(title) <= WIDTH else wrap(shown, WIDTH, first="", indent="  ")
        lines += _rows(rows)
    _errors(report, lines)
    # the site list runs to hundreds of lines: the summary again, where a terminal's last screen shows it
    lines.append("")
    lines += summary_lines(report)
    return "\n".join(lines)


def _errors(report, lines):
    if report.errors:
        lines.append("")
        lines.append("not scanned (cannot read or parse):")
        for e in report.errors:
            lines += wrap(e["path"], WIDTH, indent="  ")
            lines += wrap(e["error"], WIDTH, indent="    ")


def _where(site):
    return f"{site.module or site.path}:{site.line}"


def diff_table(diff):
    o, n = diff.old, diff.new
    lines = [f"npu-compat scan --diff: {len(diff.added)} added, {len(diff.removed)} removed, "
             f"{len(diff.changed)} verdict changed"]
    for name, rep in ((diff.old_name, o), (diff.new_name, n)):
        lines += wrap(f"{name}: {plural(len(rep.sites), 'site')} ({counts_text(rep.counts())})", WIDTH,
                      first="  ", indent="    ")
    sections = (
        ("added", [(s, s.verdict) for s in diff.added]),
        ("removed", [(s, s.verdict) for s in diff.removed]),
        ("verdict changed", [(new, f"{old.verdict} -> {new.verdict}") for old, new in diff.changed]),
    )
    for title, rows in sections:
        if not rows:
            continue
        lines += ["", f"{title} ({len(rows)}):"]
        for site, verdict in rows:
            row = f"  {_where(site)}  {site.target}  {verdict}"
            if len(row) <= WIDTH:
                lines.append(row)
            else:
                lines += wrap(_where(site), WIDTH, first="  ", indent="    ")
                lines += wrap(f"{site.target}  {verdict}", WIDTH, first="    ", indent="      ")
            if site.covered_by:  # npu_compat's record makes it eager on NPU: not a new risk
                lines += wrap(f"covered by {site.covered_by}", WIDTH, indent="      ")
            lines += wrap(site.reason, WIDTH, indent="      ")
    return "\n".join(lines)
