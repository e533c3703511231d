"""The bundle's human report: one self-contained HTML page and a compact JSON summary.

Embedded and hardware engineers open report.html from a bundle copied off a build machine, often offline,
so the page carries its figures as data URIs and loads nothing external (a CSP forbids it). report.json
holds the same headline numbers for scripts and dashboards that should not parse the whole manifest.
This module is the page's frame: its style, and the sections (report/sections/, one file each) that apply to the
bundle, in SECTIONS order. A new target's figures are a new section file and one entry here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.bundle import write_text_atomically
from edgemtl.report.fmt import e, jsonable
from edgemtl.report.sections import (Section, artifacts, budget, cpu, experts, fpga, header, mcu, plots, profile,
                                     provenance, steps, tasks, widths)
from edgemtl.report.sections.artifacts import REPORT_JSON

SECTIONS: tuple[Section, ...] = (header, steps, widths, tasks, budget, fpga, mcu, cpu, experts, profile, plots,
                                 artifacts, provenance)
REPORT_HTML = "report.html"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;color:#1d1d1f;max-width:1200px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto;max-width:100%}th,td{padding:.3em .6em;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:top}
th{background:#f5f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.ref td{background:#fafafa;font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0}dt{color:#666}dd{margin:0}
code{font-size:12px;background:#f5f5f7;padding:0 .25em;border-radius:3px}
.dim{color:#777}.ok{color:#1a7f37}.fail{color:#c62828;font-weight:bold}
.prov{font-size:11px;padding:0 .3em;border-radius:3px;background:#eee;white-space:nowrap}
.prov-measured{background:#dff3e4}.prov-simulated{background:#fff1c2}.prov-estimated{background:#fde0dc}.prov-static{background:#e1ebf7}
.prov-emulated{background:#e8defa}.prov-evaluated{background:#e1ebf7}.prov-other{background:#eee}
details summary{cursor:pointer;color:#555}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:12px}
"""


def write_report(manifest: dict, bundle_dir: Path) -> list[Path]:
    """Write report.html and report.json into the bundle and return their paths."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = bundle_dir / REPORT_HTML, bundle_dir / REPORT_JSON
    # The summary goes first so the page's artifact list finds it in the bundle.
    write_text_atomically(json_path, json.dumps(summarize(manifest), indent=2, allow_nan=False) + "\n")
    write_text_atomically(html_path, render_html(manifest, bundle_dir))
    return [html_path, json_path]


def summarize(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The report's numbers as plain JSON: what a dashboard or a regression check needs, nothing more. Each applicable
    section adds its keys; what sections add per task is merged into that task's entry."""
    found: dict[str, Any] = {}
    for section in _applicable(manifest):
        for key, value in section.summary(manifest).items():
            if key == "tasks" and isinstance(found.get("tasks"), dict):
                for name, part in value.items():
                    found["tasks"].setdefault(name, {}).update(part)
            else:
                found[key] = value
    return jsonable({key: value for key, value in found.items() if value is not None})


def render_html(manifest: Mapping[str, Any], bundle_dir: Path | None = None) -> str:
    """The report page; `bundle_dir` lets the artifact list flag files the bundle lacks."""
    body = "\n".join(part for section in _applicable(manifest) if (part := section.render(manifest, bundle_dir)))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{e(header.title(manifest))}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _applicable(manifest: Mapping[str, Any]) -> list[Section]:
    return [section for section in SECTIONS if section.applies(manifest)]
