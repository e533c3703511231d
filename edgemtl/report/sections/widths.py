"""Slimmable models compiled at one width configuration (`compile --widths`, the slice_widths pass): each encoder
stage's and task decoder's multiplier and channels, the MACs and parameters before and after, which BatchNorm
statistics the narrow model carries; and, when `edgemtl tune` left its front beside the configuration file, where the
configuration sits on it (the search's target, budget and choice, and the plot)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.report.fmt import DASH, artifact_link, definitions, e, figures_html, human_count, prov_badge, short
from edgemtl.report.read import number, section, strings
from edgemtl.report.sections import Figures, TaskInput
from edgemtl.report.width_plots import width_front, width_front_plot

_STATISTICS = {"per-width": "per-width: recalibrated at this configuration on training images",
               "sliced": "sliced: the leading channels of the full model's (no data, or the widest configuration)"}


def applies(manifest: Mapping[str, Any]) -> bool:
    return bool(_record(manifest))


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    record = _record(manifest)
    parts = [f"<h2>Width configuration</h2>\n<p>{e(record.get('source') or 'a width configuration')}, cut from a "
             "slimmable model (docs/widths.md).</p>"]
    parts += [f"<p><span class=\"fail\">warning:</span> {e(warning)}</p>" for warning in strings(record.get("warnings"))]
    badge = prov_badge(record.get("cost_provenance"), "static")
    statistics = record.get("batchnorm_statistics")
    checkpoint = section(record, "artifacts").get("checkpoint")
    parts.append(definitions([
        ("MACs, all tasks (before → after)", _before_after(record, "macs", badge)),
        ("Parameters (before → after)", _before_after(record, "params", badge)),
        ("BatchNorm statistics", e(_STATISTICS.get(str(statistics), statistics)) if statistics else None),
        ("Private per-width affines folded", str(record["affines_folded"]) if record.get("affines_folded") else None),
        ("Layers whose width changed", str(len(section(record, "channels")))),
        ("Narrow checkpoint", artifact_link(checkpoint, bundle_dir) if isinstance(checkpoint, str) else None)]))
    parts.append(_parts_table(record))
    changed = section(record, "channels")
    if changed:
        rows = "".join(f"<tr><td><code>{e(name)}</code></td><td class=\"n\">{e(_pair(pair))}</td></tr>"
                       for name, pair in changed.items())
        parts.append(f"<details><summary>Every layer whose width changed ({len(changed)})</summary><table><thead>"
                     f"<tr><th>Layer</th><th>Output channels</th></tr></thead><tbody>{rows}</tbody></table></details>")
    front = width_front(manifest)
    if front:
        parts.append(_front_html(manifest, front))
    return "\n".join(parts)


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    record = _record(manifest)
    found: dict[str, Any] = {key: record.get(key) for key in ("widths", "macs_before", "macs_after", "params_before",
                                                               "params_after", "batchnorm_statistics")}
    front = width_front(manifest)
    if front:
        found["front"] = {key: front.get(key) for key in ("file", "target", "budget", "compiled_is_chosen",
                                                          "compiled_on_front", "chosen_relative")}
    if strings(record.get("warnings")):
        found["warnings"] = strings(record.get("warnings"))
    return {"widths": found}


def compare_figures(task: TaskInput) -> Figures:
    return {}


def _record(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    record = section(section(manifest, "passes"), "slice_widths")
    return record if isinstance(record.get("widths"), Mapping) else {}


def _before_after(record: Mapping[str, Any], key: str, badge: str) -> str | None:
    before, after = number(record.get(f"{key}_before")), number(record.get(f"{key}_after"))
    if before is None or after is None:
        return None
    share = f" ({after / before:.0%})" if before else ""
    return e(f"{human_count(before)} → {human_count(after)}{share}") + badge


def _pair(pair: Any) -> str:
    values = [number(v) for v in pair] if isinstance(pair, list) and len(pair) == 2 else [None, None]
    return DASH if None in values else f"{values[0]:.0f} → {values[1]:.0f}"


def _parts_table(record: Mapping[str, Any]) -> str:
    widths, channels = section(record, "widths"), section(record, "part_channels")
    rows = []
    for kind, label in (("encoder", "encoder stage"), ("decoders", "decoder")):
        for name, multiplier in section(widths, kind).items():
            pair = section(channels, kind).get(name)
            full = number(pair[0]) if isinstance(pair, list) and pair else None
            cell = _pair(pair) if full else DASH   # 0: a decoder without a hidden layer of its own
            rows.append(f"<tr><td>{e(label)}</td><td>{e(name)}</td>"
                        f"<td class=\"n\">{e(short(number(multiplier)))}</td><td class=\"n\">{e(cell)}</td></tr>")
    return ("<table><thead><tr><th>Part</th><th>Name</th><th>Multiplier</th><th>Output channels (full → kept)</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _front_html(manifest: Mapping[str, Any], front: Mapping[str, Any]) -> str:
    target = front.get("target")
    compiled_for = section(manifest, "target").get("name")
    elsewhere = (f" <span class=\"fail\">(this bundle is for {e(compiled_for)}: the cost axis is {e(target)}'s)</span>"
                 if target and compiled_for and target != compiled_for else "")
    limit, unit = number(front.get("cost_limit")), front.get("cost_unit") or ""
    budget = e(front.get("budget") or DASH) + (f" ({e(_cost(limit, front))} {e(unit)})" if limit is not None else "")
    counts = "; ".join(f"{number(front.get(source)) or 0:.0f} {source}: cost"
                       + prov_badge(front.get(f"{source}_cost_provenance"), "estimated") + ", metrics"
                       + prov_badge(front.get(f"{source}_metrics_provenance"),
                                    "evaluated" if source == "evaluated" else "estimated")
                       for source in ("evaluated", "predicted"))
    left_out = number(front.get("points_left_out"))
    if left_out:
        counts += f" <span class=\"dim\">({left_out:.0f} predicted left out of the plot)</span>"
    relative = section(front, "chosen_relative")
    chosen = ", ".join(f"{e(task)} {value:.3f}" for task, raw in relative.items() if (value := number(raw)) is not None)
    items = [("Front", f"<code>{e(front.get('file'))}</code>"), ("Searched for target", e(target) + elsewhere),
             ("Budget", budget), ("Points", counts),
             ("The search's choice, each task relative to the widest", chosen or None),
             ("Compiled configuration is the search's choice", _yes_no(front.get("compiled_is_chosen"))),
             ("Compiled configuration is on the evaluated Pareto front", _yes_no(front.get("compiled_on_front")))]
    if not front.get("compiled"):
        items.append(("Compiled configuration on the front", "<span class=\"dim\">not among the front's points</span>"))
    caption = ("Cost against each task's metric relative to the widest configuration (1 = as good; lower-is-better "
               "metrics as widest / value): evaluated points filled (dark: Pareto front), predicted hollow, the budget "
               "dashed, the search's choice ringed, the compiled configuration a star")
    return "\n".join(["<h3>Where it sits on the search front</h3>", definitions(items),
                      *figures_html(((caption, width_front_plot),), manifest)])


def _cost(value: float, front: Mapping[str, Any]) -> str:
    return human_count(value) if front.get("cost_kind") == "macs" else f"{value:.4g}"


def _yes_no(value: Any) -> str | None:
    return None if not isinstance(value, bool) else "<span class=\"ok\">yes</span>" if value else "no"
