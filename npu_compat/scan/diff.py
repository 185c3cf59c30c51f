"""``--diff OLD NEW``: what an upgrade brings.  Sites are matched by module
(or path) and qualified name, never by line; each side is a tree, an
installed version's directory, or a report saved with ``--json``."""

import json
import os

from .files import ScanError
from .render import counts_text
from .report import Report


class Diff:
    """Sites added, removed, and whose verdict changed between two reports."""

    def __init__(self, old, new, old_name="OLD", new_name="NEW"):
        self.old, self.new = old, new
        self.old_name, self.new_name = old_name, new_name
        self.added, self.removed, self.changed = [], [], []
        olds, news = _by_key(old.sites), _by_key(new.sites)
        for key, sites in news.items():
            before = olds.get(key, [])
            for i, site in enumerate(sites):
                if i >= len(before):
                    self.added.append(site)
                elif before[i].verdict != site.verdict:
                    self.changed.append((before[i], site))
        for key, sites in olds.items():
            self.removed += sites[len(news.get(key, [])):]

    def failing(self, policy):
        """What is new (added, or changed into) and fails ``policy``."""
        return self.new.failing(policy, self.added + [n for _, n in self.changed])

    def exit_code(self, policy):
        return 1 if self.failing(policy) else 0

    def summary(self):
        return {
            "old": {"source": self.old_name, "sites": len(self.old.sites), **self.old.counts()},
            "new": {"source": self.new_name, "sites": len(self.new.sites), **self.new.counts()},
            "added": len(self.added),
            "removed": len(self.removed),
            "changed": len(self.changed),
        }

    def summary_line(self):
        return (
            f"npu-compat scan --diff: {self.old_name}: {len(self.old.sites)} sites ({counts_text(self.old.counts())}); "
            f"{self.new_name}: {len(self.new.sites)} sites ({counts_text(self.new.counts())}); "
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} verdict changed"
        )

    def to_dict(self):
        return {
            "summary": self.summary(),
            "added": [s.as_dict() for s in self.added],
            "removed": [s.as_dict() for s in self.removed],
            "changed": [{"old": o.as_dict(), "new": n.as_dict()} for o, n in self.changed],
        }


def _by_key(sites):
    out = {}
    for s in sites:
        out.setdefault(s.key, []).append(s)
    return out


def load_side(arg, scan, **kw):
    """A report for one side of ``--diff``: a saved JSON report, or a scan of the path."""
    if os.path.isfile(arg) and not arg.endswith(".py"):
        try:
            with open(arg, "rb") as f:
                data = json.loads(f.read())
            return Report.from_dict(data, source=arg)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ScanError(f"{arg}: not a report saved with `npu-compat scan --json` ({exc})") from None
    return scan([arg], **kw)
