"""comparison.html: the comparison document (report/compare.py) as one self-contained page.

Figures are data URIs and a CSP forbids anything external; every string is escaped; every number carries a badge of
its provenance's kind linking to a numbered note that says where it was measured or what model produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgemtl.manifest import KINDS, provenance_kind, provenance_of
from edgemtl.report.compare_plots import COMPARISON_PLOTS
from edgemtl.report.figures import text
from edgemtl.report.fmt import DASH as _DASH
from edgemtl.report.fmt import e as _e
from edgemtl.report.fmt import figures_html, human_bytes, human_count, human_ms
from edgemtl.report.html import CSS
from edgemtl.report.read import number
from edgemtl.report.read import section as _section

PAGE_CSS = CSS + """
.warn{color:#9a5b00}.cell small{display:block;color:#777;font-size:11px}
td.n small{white-space:normal}
table.side td{min-width:11em}
sup a{text-decoration:none}
"""


class _Citations:
    """Numbered provenance notes, one per distinct (kind, device, detail), each listing where its numbers were read;
    every figure's badge links to one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.sources: list[list[str]] = []

    def cite(self, raw: Any) -> int:
        found = provenance_of(raw, default="estimated")
        key = {"kind": found.kind, "device": found.device, "detail": found.detail}
        if key not in self.items:
            self.items.append(key)
            self.sources.append([])
        index = self.items.index(key)
        if found.source and found.source not in self.sources[index]:
            self.sources[index].append(found.source)
        return index + 1


def render_comparison(document: Mapping[str, Any]) -> str:
    """comparison.html: self-contained (figures as data URIs, a CSP forbidding anything external), every string
    escaped, every number with a provenance badge linking to its full description."""
    notes = _Citations()
    bundles = [b for b in document.get("bundles", []) if isinstance(b, Mapping)]
    labels = [text(b.get("label")) for b in bundles]
    title = "edgemtl comparison: " + " · ".join(labels)
    tasks = _section(document, "tasks")
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p class=\"dim\">Made {_e(document.get('created'))} on {_e(document.get('generated_on'))} by "
             "<code>edgemtl report</code>. Read <a href=\"#how\">how to read this page</a> first.</p>",
             _kinds_section(document),
             _bundles_section(bundles)]
    if document.get("notes"):
        parts.append("<h2>Read this before comparing</h2><ul>"
                     + "".join(f"<li class=\"warn\">{_e(note)}</li>" for note in document["notes"]) + "</ul>")
    parts.append("<h2>Tasks side by side</h2>")
    for task, by_bundle in tasks.items():
        parts.append(_task_table(str(task), by_bundle, labels, notes))
    parts.append(_speedup_section(document, notes))
    parts.append(_layers_section(tasks, labels, notes))
    figures = figures_html(COMPARISON_PLOTS, document)
    parts.append("<h2>Plots</h2>\n" + ("\n".join(figures) or "<p class=\"dim\">Nothing to plot.</p>"))
    parts.append(_citations_section(notes))
    parts.append(_how_to_read())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" "
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{PAGE_CSS}</style></head>\n<body>\n" + "\n".join(parts)
            + "\n</body></html>\n")


def _kinds_section(document: Mapping[str, Any]) -> str:
    kinds = _section(document, "provenance_kinds")
    items = "".join(f"<dt>{_badge(kind)}</dt><dd>{_e(text)}</dd>" for kind, text in kinds.items())
    return f"<h2>Kinds of numbers</h2>\n<dl>{items}</dl>"


def _bundles_section(bundles: list[Mapping[str, Any]]) -> str:
    rows = []
    for b in bundles:
        model, host = _section(b, "model"), _section(b, "compiled_on")
        sha = text(model.get("sha256"))
        profiles = _section(b, "profiles")
        cores = f", {host['cores']} cores" if host.get("cores") else ""
        profiled = "<br>".join(f"{_e(p.get('device'))} {_badge(provenance_kind(p.get('provenance')))} "
                               f"<small class=\"dim\">{_e(p.get('description'))}</small>"
                               for p in profiles.values() if isinstance(p, Mapping)) or _DASH
        rows.append("<tr>" + "".join((
            f"<td><strong>{_e(b.get('label'))}</strong></td>",
            f"<td>{_e(b.get('target'))} · {_e(b.get('flow'))}<br><small class=\"dim\">"
            f"{_e(b.get('target_description'))}</small></td>",
            f"<td><code>{_e(model.get('path') or _DASH)}</code><br><small class=\"dim\" title=\"{_e(sha)}\">"
            f"{_e(model.get('arch') or '')} sha256 {_e(sha[:12] or _DASH)}</small></td>",
            f"<td>{_e(host.get('cpu') or _DASH)}{_e(cores)}"
            f"<br><small class=\"dim\">{_e(host.get('platform') or '')}</small></td>",
            f"<td>{_e(b.get('created') or _DASH)}<br><small class=\"dim\">edgemtl {_e(b.get('edgemtl_version') or '?')}"
            f"</small></td>",
            f"<td>{profiled}</td>",
            f"<td><code>{_e(b.get('path'))}</code><br><small class=\"dim\" title=\"{_e(b.get('manifest_sha256'))}\">"
            f"manifest sha256 {_e(text(b.get('manifest_sha256'))[:12])}</small></td>",
        )) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Column", "Target · flow", "Model", "Compiled on", "Created",
                                               "Profiles", "Bundle"))
    return f"<h2>Bundles</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _task_table(task: str, by_bundle: Any, labels: list[str], notes: _Citations) -> str:
    by_bundle = by_bundle if isinstance(by_bundle, Mapping) else {}
    columns = [label for label in labels if isinstance(by_bundle.get(label), Mapping)]
    metric_name = next((text(_section(by_bundle[c], "metric").get("name")) for c in columns
                        if _section(by_bundle[c], "metric")), "")
    higher = next((_section(by_bundle[c], "metric").get("higher_is_better") for c in columns
                   if _section(by_bundle[c], "metric")), None)
    arrow = " ↑ higher is better" if higher is True else " ↓ lower is better" if higher is False else ""
    rows: list[tuple[str, list[str]]] = [
        ("Shipped runtime", [_runtime_cell(_section(by_bundle[c], "runtime")) for c in columns]),
        (f"Metric {metric_name}{arrow}, float",
         [_figure_cell(_section(_section(by_bundle[c], "metric"), "float"), notes, _metric_text) for c in columns]),
        (f"Metric {metric_name}, as deployed",
         [_deployed_metric_cell(_section(by_bundle[c], "metric"), notes) for c in columns]),
        ("Latency per inference (shipped runtime, best-founded figure)",
         [_latency_cell(_section(by_bundle[c], "latency"), notes, headline=True) for c in columns]),
        ("Other latencies", [_other_latencies(by_bundle[c], notes) for c in columns]),
        ("Throughput", [_figure_cell(_section(by_bundle[c], "throughput"), notes, lambda v: f"{v:,.0f} /s")
                        for c in columns]),
        ("Memory", [_memory_cell(by_bundle[c].get("memory"), notes) for c in columns]),
        ("Model size (deployed artifact)",
         [_figure_cell(_section(by_bundle[c], "model_size"), notes, human_bytes) for c in columns]),
        ("Energy per inference", [_figure_cell(_section(by_bundle[c], "energy"), notes, lambda v: f"{v:.3g} mJ")
                                  for c in columns]),
        ("Simulated instructions", [_figure_cell(_section(by_bundle[c], "instructions"), notes, human_count)
                                    for c in columns]),
    ]
    head = "<th>Quantity</th>" + "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr><td>" + _e(name) + "</td>" + "".join('<td class="cell">' + cell + "</td>" for cell in cells)
                   + "</tr>" for name, cells in rows if any(cell != _DASH for cell in cells))
    return f"<h3>{_e(task)}</h3>\n<table class=\"side\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _runtime_cell(runtime: Mapping[str, Any]) -> str:
    if not runtime:
        return _DASH
    return (f"<code>{_e(runtime.get('value'))}</code><small>{_e(runtime.get('text'))}</small>"
            f"<small>chosen by: {_e(runtime.get('chosen_by') or 'unknown')}</small>")


def _metric_text(value: float) -> str:
    return f"{value:.4g}"


def _deployed_metric_cell(metric: Mapping[str, Any], notes: _Citations) -> str:
    deployed = _section(metric, "deployed")
    if not deployed:
        return _DASH
    cell = _figure_cell(deployed, notes, _metric_text)
    change = number(metric.get("relative_change"))
    precision = text(metric.get("deployed_precision"))
    extra = f"{precision}" + (f", {change:+.2%} vs float" if change is not None else "")
    return cell + f"<small>{_e(extra)}</small>"


def _figure_cell(fig: Mapping[str, Any], notes: _Citations, fmt: Any) -> str:
    value = number(fig.get("value")) if fig else None
    provenance = fig.get("provenance") if fig else None
    if value is None:
        if fig and fig.get("missing"):
            return f"<span class=\"fail\">missing: {_e(fig['missing'])}</span>"
        return _DASH
    what = f"<small>{_e(fig['what'])}</small>" if fig.get("what") else ""
    return f"{_e(fmt(value))} {_cite(provenance, notes)}{what}{_device(provenance)}"


def _latency_cell(latency: Mapping[str, Any], notes: _Citations, headline: bool = False) -> str:
    median = number(latency.get("median")) if latency else None
    if median is None:
        return _DASH
    provenance = latency.get("provenance")
    kind = provenance_kind(provenance)
    p90 = number(latency.get("p90"))
    shown = human_ms(median) + (f" <span class=\"dim\">p90 {human_ms(p90)}</span>" if p90 is not None else "")
    warn = ""
    if kind == "measured" and not latency.get("on_target"):
        warn = "<small class=\"warn\">measured off the target (see device)</small>"
    elif kind == "emulated":
        warn = "<small class=\"warn\">emulated: not the device's speed</small>"
    if latency.get("check_passed") is False:
        warn += "<small class=\"fail\">output check failed</small>"
    runtime = f"<small>{_e(latency.get('runtime'))}</small>" if headline else ""
    return f"{shown} {_cite(provenance, notes)}{runtime}{_device(provenance)}{warn}"


def _other_latencies(figures: Mapping[str, Any], notes: _Citations) -> str:
    headline = figures.get("latency")
    others = [lat for lat in figures.get("latencies") or [] if isinstance(lat, Mapping) and lat != headline]
    if not others:
        return _DASH
    items = "".join(f"<li><code>{_e(lat.get('runtime'))}</code>: {_latency_cell(lat, notes)}</li>" for lat in others)
    return f"<details><summary>{len(others)} more</summary><ul>{items}</ul></details>"


def _memory_cell(memory: Any, notes: _Citations) -> str:
    figures = [m for m in memory if isinstance(m, Mapping)] if isinstance(memory, list) else []
    if not figures:
        return _DASH
    head = _figure_cell(figures[0], notes, human_bytes)
    if len(figures) == 1:
        return head
    rest = "".join(f"<li>{_figure_cell(m, notes, human_bytes)}</li>" for m in figures[1:])
    return f"{head}<details><summary>{len(figures) - 1} more</summary><ul>{rest}</ul></details>"


def _speedup_section(document: Mapping[str, Any], notes: _Citations) -> str:
    rows = []
    for item in document.get("speedups") or []:
        fast, slow = _section(item, "fast"), _section(item, "slow")
        ratio = number(item.get("ratio"))
        rows.append("<tr>" + "".join((
            f"<td>{_e(item.get('task'))}</td>", f"<td>{_e(item.get('device'))}</td>",
            f"<td>{_e(fast.get('bundle'))} · <code>{_e(fast.get('runtime'))}</code></td>",
            f"<td class=\"n\">{human_ms(number(fast.get('median_ms')) or 0.0)}</td>",
            f"<td>{_e(slow.get('bundle'))} · <code>{_e(slow.get('runtime'))}</code></td>",
            f"<td class=\"n\">{human_ms(number(slow.get('median_ms')) or 0.0)}</td>",
            f"<td class=\"n\">{f'{ratio:.2f}×' if ratio is not None else _DASH}</td>")) + "</tr>")
    intro = ("<p>Ratios only between two <strong>measured</strong> medians of one task on the <strong>same device"
             "</strong> (same description: machine and thread count), both outputs checked where a check exists. "
             "Nothing else on this page is divided by anything.</p>")
    table = ("<table><thead><tr><th>Task</th><th>Device</th><th>Faster</th><th>Median</th><th>Slower</th>"
             f"<th>Median</th><th>Slower / faster</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
             if rows else "<p class=\"dim\">No two measured figures share a device: no ratio is given.</p>")
    skipped = document.get("not_compared") or []
    if skipped:
        items = "".join(f"<li>{_e(s.get('task'))}: {_e(' vs '.join(map(str, s.get('bundles') or [])))}: "
                        f"{_e(s.get('why'))}</li>" for s in skipped if isinstance(s, Mapping))
        table += f"<details><summary>{len(skipped)} pairs of headline latencies not compared, and why</summary>" \
                 f"<ul>{items}</ul></details>"
    return f"<h2>Speed-ups (same device, measured)</h2>\n{intro}\n{table}"


def _layers_section(tasks: Mapping[str, Any], labels: list[str], notes: _Citations) -> str:
    parts = ["<h2>Per-layer breakdowns</h2>",
             "<p>The most expensive layers of each task's deployed graph, from whatever the runtime or the "
             "estimate gives; shares are of the summed per-layer time (or cycles).</p>"]
    for task, by_bundle in tasks.items():
        if not isinstance(by_bundle, Mapping):
            continue
        for label in labels:
            layers = _section(_section(by_bundle, label), "layers")
            if not layers:
                continue
            if layers.get("none"):
                parts.append(f"<p><strong>{_e(task)} / {_e(label)}</strong>: <span class=\"dim\">none: "
                             f"{_e(layers['none'])}</span></p>")
                continue
            provenance = layers.get("provenance")
            rows = layers.get("layers") if isinstance(layers.get("layers"), list) else []
            has_cycles = any(isinstance(r, Mapping) and number(r.get("cycles")) is not None for r in rows)
            has_instr = any(isinstance(r, Mapping) and number(r.get("instructions")) is not None for r in rows)
            has_bound = any(isinstance(r, Mapping) and r.get("bound") for r in rows)
            head = ["Layer", "Op", "ms"] + (["cycles"] if has_cycles else []) + ["Share"] \
                + (["qemu instructions"] if has_instr else []) + (["Bound by"] if has_bound else [])
            body = []
            for row in rows:
                if not isinstance(row, Mapping):
                    continue
                cells = [f"<td><code>{_e(row.get('name'))}</code></td>", f"<td>{_e(row.get('op') or _DASH)}</td>",
                         _num(row.get("ms"), human_ms)]
                if has_cycles:
                    cells.append(_num(row.get("cycles"), human_count))
                cells.append(_num(row.get("share"), lambda v: f"{v:.1%}"))
                if has_instr:
                    cells.append(_num(row.get("instructions"), human_count))
                if has_bound:
                    cells.append(f"<td>{_e(row.get('bound') or _DASH)}</td>")
                body.append(f"<tr>{''.join(cells)}</tr>")
            extra = ""
            if layers.get("instructions_provenance"):
                extra = f" instructions: {_cite(layers['instructions_provenance'], notes)}"
            summary = (f"<strong>{_e(task)} / {_e(label)}</strong>: {_e(layers.get('source'))}, "
                       f"{_e(layers.get('nodes'))} layers {_cite(provenance, notes)}{extra}"
                       + (f" <span class=\"dim\">{_e(layers.get('graph'))}</span>" if layers.get("graph") else ""))
            parts.append(f"<details><summary>{summary}</summary><table><thead><tr>"
                         + "".join(f"<th>{_e(h)}</th>" for h in head)
                         + f"</tr></thead><tbody>{''.join(body)}</tbody></table></details>")
    return "\n".join(parts)


def _citations_section(notes: _Citations) -> str:
    items = []
    for index, (item, sources) in enumerate(zip(notes.items, notes.sources), start=1):
        shown = "; ".join(sources[:6]) + (f"; and {len(sources) - 6} more" if len(sources) > 6 else "")
        items.append(f"<li id=\"p{index}\">{_badge(item['kind'])} "
                     + " · ".join(_e(item[k]) for k in ("device", "detail") if item.get(k))
                     + (f"<br><small class=\"dim\">read from {_e(shown)}</small>" if shown else "") + "</li>")
    return f"<h2>Provenance of every number</h2>\n<ol>{''.join(items)}</ol>"


def _how_to_read() -> str:
    return (
        "<h2 id=\"how\">How to read this page</h2><ul>"
        "<li>Each column is one bundle (one model compiled for one target); each task has its own table.</li>"
        "<li>Every number has a coloured badge saying what kind of number it is and a footnote [n] saying where it "
        "was measured or what model produced it; hover a badge for the same text.</li>"
        "<li><strong>measured</strong> figures on different devices, or figures of different kinds, are shown side "
        "by side but never divided: an estimate for GAP9 and a measurement on an x86 host are not a speed-up.</li>"
        "<li>An arm64 bundle profiled with <code>--device local</code> was timed on this x86 host: its latency is "
        "real but is <em>not</em> the arm64 board's; profile it through a board "
        "(<code>edgemtl profile BUNDLE --device rpc://HOST:PORT/KEY</code>) for that.</li>"
        "<li>Memory differs in meaning per target: the GAP9 arena is an exact static allocation, the FPGA figure is "
        "estimated on-chip RAM, the CPU figure an analysis of the graph (the runtime may allocate more).</li>"
        "<li>comparison.json holds every figure with the same provenance objects.</li></ul>")


def _badge(kind: str) -> str:
    css = kind if kind in KINDS else "other"
    return f"<span class=\"prov prov-{css}\">{_e(kind or 'unlabelled')}</span>"


def _cite(raw: Any, notes: _Citations) -> str:
    """A figure's badge: its provenance's kind, the provenance in words in the tooltip, and a link to its note."""
    found = provenance_of(raw) if raw else None
    if found is None:
        return "<span class=\"prov prov-other\">unlabelled</span>"
    index = notes.cite(found)
    title = " · ".join(part for part in (found.kind, found.device, found.detail) if part)
    return (f"<span class=\"prov prov-{found.kind}\" title=\"{_e(title)}\">{_e(found.kind)}</span>"
            f"<sup><a href=\"#p{index}\">[{index}]</a></sup>")


def _device(raw: Any) -> str:
    found = provenance_of(raw) if raw else None
    return f"<small>{_e(found.device)}</small>" if found and found.device else ""


def _num(value: Any, fmt: Any) -> str:
    parsed = number(value)
    return f"<td class=\"n\">{_e(fmt(parsed)) if parsed is not None else _DASH}</td>"
