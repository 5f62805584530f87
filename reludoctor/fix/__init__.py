"""reludoctor fix: plan (which units, which strategy), run (scan, repair through the model's
backend, verify, rescan), verify (outputs against the original), output (where it is written)."""

from reludoctor.fix.plan import Strategy
from reludoctor.fix.run import FileInfo, FixSummary, check_options, fix

__all__ = ["FileInfo", "FixSummary", "Strategy", "check_options", "fix"]
