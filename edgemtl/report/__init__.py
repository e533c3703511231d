"""The bundle's human report (report.html) and its JSON summary (report.json), built from manifest.json."""

from edgemtl.report.html import write_report

__all__ = ["write_report"]
