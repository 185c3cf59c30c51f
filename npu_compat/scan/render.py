"""Text renderings of a :class:`~.report.Report` and of a :class:`~.diff.Diff`
(``--json`` is their ``to_dict()``)."""

from .verdicts import GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN


def counts_text(c):
    return f"{c[GUARDED]} guarded, {c[NPU_BACKEND]} npu-backend, {c[UNGUARDED]} unguarded, {c[UNKNOWN]} unknown"


def summary_line(report):
    s = report.summary()
    return (
        f"npu-compat scan: {s['files_read']} files read ({s['files_parsed']} parsed, "
        f"{s['files_skipped']} cannot hold a site, {s['files_failed']} failed), "
        f"{s['sites']} torch.compile sites: {counts_text(s)}; "
        f"{s['unguarded_covered']} of {s[UNGUARDED]} unguarded covered by npu_compat patches; "
        f"{report.elapsed:.2f} s"
    )


def _columns(rows, head, fixed):
    widths = [len(h) for h in head[:fixed]]
    for row in rows:
        for i in range(fixed):
            widths[i] = max(widths[i], len(row[i]))
    return "  " + "  ".join("{:<%d}" % w for w in widths) + "  {}"


def report_table(report):
    lines = [summary_line(report)]
    if not report.sites:
        lines.append("no torch.compile sites found")
    head = ("line", "target", "verdict", "covered by", "reason")
    by_file = {}
    for s in report.sites:
        by_file.setdefault((s.path, s.module), []).append(
            (str(s.line), s.target, s.verdict, s.covered_by or "-", s.reason)
        )
    fmt = _columns([r for rows in by_file.values() for r in rows], head, 4)
    for (path, module), rows in by_file.items():
        lines.append("")
        lines.append(f"{path}  [{module}]" if module else path)
        lines.append(fmt.format(*head))
        lines.extend(fmt.format(*row) for row in rows)
    if report.errors:
        lines.append("")
        lines.append("not scanned (cannot read or parse):")
        lines.extend(f"  {e['path']}: {e['error']}" for e in report.errors)
    return "\n".join(lines)


def _where(site):
    return f"{site.module or site.path}:{site.line}"


def diff_table(diff):
    lines = [diff.summary_line()]
    head = ("where", "target", "verdict", "reason")
    sections = (
        ("added", [(_where(s), s.target, s.verdict, s.reason) for s in diff.added]),
        ("removed", [(_where(s), s.target, s.verdict, s.reason) for s in diff.removed]),
        ("verdict changed", [
            (_where(new), new.target, f"{old.verdict} -> {new.verdict}", new.reason) for old, new in diff.changed
        ]),
    )
    for title, rows in sections:
        if not rows:
            continue
        fmt = _columns(rows, head, 3)
        lines += ["", f"{title} ({len(rows)}):", fmt.format(*head)]
        lines.extend(fmt.format(*row) for row in rows)
    return "\n".join(lines)
