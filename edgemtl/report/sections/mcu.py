"""MCU targets (the mcu-gap9 flow): per task the int8 metric, the generated C's bit-exact checks (host gcc, qemu),
its arena, the L2 placement, Deeploy's tiled code, the latency and energy estimate with its assumptions, and the
board kit's make line; in report.json the same headline; on the comparison page the int8 metric, the estimate,
the arena and placement, the C's weights, qemu's instructions and the per-layer estimate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.manifest import figure, prov, provenance_text
from edgemtl.report.figures import TOP_LAYERS, held_out, latency, metric, metric_figure, metric_name, text
from edgemtl.report.fmt import (DASH, artifact_link, e, figures_html, human_bytes, human_count, human_ms, plain_text,
                                prov_badge, short, table)
from edgemtl.report.mcu_plots import mcu_layer_costs, mcu_layer_cycles_plot, mcu_placement_plot
from edgemtl.report.read import number, pick, section, strings, target_flow, task_entries
from edgemtl.report.sections import Figures, TaskInput

FLOW = "mcu-gap9"
RUNTIME = "gap9-c"
_RUNTIME_TEXT = "generated C on GAP9 (edgemtl's portable C99; Deeploy's tiled cluster code where it maps)"
_ASSUMPTIONS_ID = "mcu-assumptions"
# Entries only the MCU flow writes ("int8" is not one: the arm64 flow records its int8 model under it too).
_MCU_KEYS = ("memory_placement", "cycle_estimate", "deeploy", "deeploy_mappable")
_QEMU_DEVICE = "qemu rv32imac (one core, no SIMD)"
PLOTS = (
    ("GAP9 memory placement per task, estimated by edgemtl's placement model (analysis/mcu_cost.py): activation "
     "arena, weights, code allowance and L3 staging in L2 against the target's L2 size (dashed), and weights "
     "spilled to L3 where any", mcu_placement_plot),
    ("Per layer, two different quantities on a log axis: GAP9 cluster cycles estimated by edgemtl's analytical "
     "model (8 cores, PULP-NN-class int8 kernels, DMA at the target's bandwidths; not run) beside retired "
     "instructions of the portable C simulated under qemu (one rv32imac core, no SIMD; instructions, not cycles)",
     mcu_layer_cycles_plot),
)


def applies(manifest: Mapping[str, Any]) -> bool:
    return target_flow(manifest) == FLOW or bool(_tasks(manifest))


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    tasks = _tasks(manifest)
    if not tasks:
        return ""
    kit = section(manifest, "board_kit")
    rows, commands = [], False
    for name, entry in tasks:
        c = section(entry, "c")
        command = _kit_command(kit, entry)
        commands = commands or command != DASH
        rows.append("<tr>" + "".join((
            f"<td>{e(name)}</td>",
            f"<td>{_metric_cell(entry.get('int8'))}</td>",
            f"<td>{_host_cell(c.get('host'))}</td>",
            f"<td>{_qemu_cell(c.get('qemu'))}</td>",
            f"<td class=\"n\">{_arena_cell(c.get('arena'))}</td>",
            f"<td>{_placement_cell(entry.get('memory_placement'))}</td>",
            f"<td>{_deeploy_cell(entry.get('deeploy'), entry.get('deeploy_mappable'))}</td>",
            f"<td>{_estimate_cell(entry.get('cycle_estimate'))}</td>",
            f"<td>{command}</td>",
        )) + "</tr>")
    headers = ("Task", "Metric, float → int8", "C bit-exact, host gcc", "C bit-exact, qemu rv32", "Arena",
               "L2 placement", "Deeploy (tiled cluster code)", "Latency · energy per inference",
               "Board kit, from the bundle (GVSoC; then platform=board)")
    parts = [table("MCU (GAP9)", headers, rows), _assumptions(tasks), _provenance_list(tasks), _context(tasks)]
    if isinstance(kit.get("readme"), str):
        parts.append(f"<p>Board kit (GAP SDK Makefile + <code>main.c</code> harness, runs each task's C on GVSoC or "
                     f"the GAP9 EVK and checks it bit for bit): see {artifact_link(kit['readme'], None)}"
                     + (f"; next: <code>{e(kit['next'])}</code>"
                        if isinstance(kit.get("next"), str) and not commands else "")
                     + ".</p>")
    return "\n".join([part for part in parts if part] + figures_html(PLOTS, manifest))


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Per task: the C's bit-exact flags and the estimate, each with its provenance (the int8 metric: tasks.py)."""
    found = {name: _task_summary(entry) for name, entry in _tasks(manifest)}
    return {"tasks": {name: value for name, value in found.items() if value}}


def compare_figures(task: TaskInput) -> Figures:
    entry, name = task.entry, task.task
    runtime = task.runtime or RUNTIME
    found: Figures = {"runtime": {"value": runtime, "text": _RUNTIME_TEXT if runtime == RUNTIME else runtime,
                                  "chosen_by": "the gap9 flow's only deployment path"},
                      "latencies": _latencies(name, entry), "memory": _memory(name, entry),
                      "layers": _layers(name, entry)}
    for key, value in (("metric", _metric(task)), ("model_size", _weights(name, entry)),
                       ("energy", _energy(name, entry)), ("instructions", _instructions(name, entry))):
        if value is not None:
            found[key] = value  # type: ignore[literal-required]
    return found


def _tasks(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    mcu_flow = target_flow(manifest) == FLOW
    return [(name, entry) for name, entry in task_entries(manifest).items()
            if _has_mcu_data(entry) or (mcu_flow and isinstance(entry.get("int8"), Mapping))]


def _has_mcu_data(entry: Mapping[str, Any]) -> bool:
    if any(isinstance(entry.get(key), Mapping) for key in _MCU_KEYS):
        return True
    c = section(entry, "c")
    return any(isinstance(c.get(key), Mapping) for key in ("host", "qemu", "arena"))


# ------------------------------------------------------------------------------------------------ the page

def _metric_cell(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return DASH
    if raw.get("ok") is False:
        return f"<span class=\"fail\">not quantized</span>: {e(raw.get('error') or 'no reason recorded')}"
    before, after = section(raw, "metric_float"), section(raw, "metric_int8")
    name = raw.get("metric") if isinstance(raw.get("metric"), str) and raw.get("metric") in before \
        else next(iter(before), None)
    if name is None:
        note = raw.get("metrics")
        return f"<span class=\"dim\">int8, not scored{f': {e(note)}' if isinstance(note, str) else ''}</span>"
    old, new = number(before.get(name)), number(after.get(name))
    others = "; ".join(f"{key} {short(number(before.get(key)))} → {short(number(after.get(key)))}"
                       for key in before if key != name)
    title = f" title=\"{e(others)}\"" if others else ""
    shown = f"<span{title}>{e(name)} {short(old)} → {short(new)}</span>"
    change = number(raw.get("relative_change"))
    if change is None and old and new is not None:
        change = (new - old) / abs(old)
    if change is None:
        return shown
    higher = raw.get("higher_is_better")
    direction = ("" if change == 0 or not isinstance(higher, bool)
                 else ", worse" if (change < 0) == higher else ", better")
    return shown + f" <span class=\"dim\">({change:+.2%}{direction})</span>"


def _host_cell(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return DASH
    samples, compiler = number(raw.get("samples")), raw.get("compiler")
    return (_exact_mark(raw.get("bit_exact"))
            + (f" on {samples:.0f} samples" if samples is not None else "")
            + (f"<br><span class=\"dim\">{e(compiler)}</span>" if isinstance(compiler, str) and compiler else ""))


def _qemu_cell(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return DASH
    if raw.get("skipped"):
        return f"<span class=\"dim\">not run: {e(raw['skipped'])}</span>"
    samples = number(raw.get("samples"))
    totals = section(section(raw, "instructions"), "totals")
    count, per_mac = number(totals.get("instructions")), number(totals.get("instructions_per_mac"))
    return (_exact_mark(raw.get("bit_exact"))
            + (f" on {samples:.0f} samples" if samples is not None else "")
            + prov_badge(raw.get("provenance"), "simulated (qemu)")
            + (f"<br><span class=\"dim\">{human_count(count)} instructions"
               + (f" ({per_mac:.3g} / MAC)" if per_mac is not None else "") + ", median</span>"
               if count is not None else ""))


def _exact_mark(flag: Any) -> str:
    if flag is True:
        return "<span class=\"ok\">✓ bit-exact</span>"
    if flag is False:
        return "<span class=\"fail\">✗ differs from the reference</span>"
    return DASH


def _arena_cell(raw: Any) -> str:
    arena = number(raw.get("arena_bytes")) if isinstance(raw, Mapping) else None
    if arena is None:
        return DASH
    bound = number(raw.get("lower_bound"))
    title = f" title=\"liveness lower bound {bound:,.0f} B\"" if bound is not None else ""
    return f"<span{title}>{human_bytes(arena)}</span>" + prov_badge(raw.get("provenance"), "static")


def _placement_cell(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return DASH
    status = plain_text(raw.get("status"))
    css = {"fits-l2": "ok", "too-big": "fail"}.get(status, "")
    used, capacity = number(raw.get("l2_used_bytes")), number(raw.get("l2_bytes"))
    head = f"<span class=\"{css}\">{e(status)}</span>" if css else e(status or DASH)
    if used is not None and capacity:
        head += f" {human_bytes(used)} of {human_bytes(capacity)}"
    spilled = number(raw.get("l3_used_bytes"))
    if spilled:
        head += f", {human_bytes(spilled)} weights in L3"
    verdict = raw.get("verdict")
    return (head + prov_badge(raw.get("provenance"), "estimated")
            + (f"<br><span class=\"dim\">{e(verdict)}</span>" if isinstance(verdict, str) and verdict else ""))


def _deeploy_cell(raw: Any, mappable: Any) -> str:
    mappable = mappable if isinstance(mappable, Mapping) else {}
    if not isinstance(raw, Mapping):
        return _unmapped(mappable.get("unmapped"), "edgemtl's check: ") if mappable.get("ok") is False else (
            "<span class=\"dim\">edgemtl's check: every layer maps</span>" if mappable.get("ok") is True else DASH)
    if raw.get("available") is False:
        how = raw.get("how_to_create") or "edgemtl toolchain install deeploy"
        text_ = (f"<span class=\"dim\" title=\"{e(raw.get('reason') or '')}\">Deeploy venv missing: "
                 f"<code>{e(how)}</code></span>")
        if mappable.get("ok") is False:
            text_ += "<br>" + _unmapped(mappable.get("unmapped"), "edgemtl's check: ")
        elif mappable.get("ok") is True:
            text_ += "<br><span class=\"dim\">edgemtl's check: every layer maps onto PULPOpen</span>"
        return text_
    if raw.get("ok") is True:
        text_ = _deeploy_ok(raw)
    elif isinstance(raw.get("unmapped"), list) and raw["unmapped"]:
        text_ = _unmapped(raw["unmapped"], "")
    else:
        text_ = f"<span class=\"fail\">failed</span>: {e(raw.get('reason') or 'no reason recorded')}"
    hints = raw.get("hints")
    if isinstance(hints, list) and hints:
        text_ += "".join(f"<br><span class=\"dim\">hint: {e(hint)}</span>" for hint in hints)
    return text_


def _deeploy_ok(raw: Mapping[str, Any]) -> str:
    """Deeploy's memory per level (static + dynamic, against its capacity) and what part of the task it covers."""
    lines = []
    memory, fits = section(raw, "memory"), section(raw, "fits")
    for level in sorted(memory, key=str):
        usage = memory[level] if isinstance(memory[level], Mapping) else {}
        total, capacity = number(usage.get("total")), number(usage.get("capacity"))
        static, dynamic = number(usage.get("static")), number(usage.get("dynamic"))
        if total is None:
            continue
        lines.append(f"{e(level)} {human_bytes(total)}"
                     + (f" of {human_bytes(capacity)}" if capacity is not None else "")
                     + (f" <span class=\"dim\">(static {human_bytes(static)} + dynamic {human_bytes(dynamic)})</span>"
                        if static is not None and dynamic is not None else "")
                     + (" <span class=\"fail\">over</span>" if fits.get(level) is False else ""))
    tool = raw.get("tool") or raw.get("platform")
    scope = ""  # a prefix run covers only part of the task: say which part, so its memory is not read as the whole
    if raw.get("scope") == "prefix":
        share = number(raw.get("prefix_macs_share"))
        elsewhere = raw.get("layers_elsewhere") if isinstance(raw.get("layers_elsewhere"), list) else []
        scope = (" <span class=\"dim\">prefix only" + (f", {share:.0%} of the task's MACs" if share is not None else "")
                 + (f"; in edgemtl's C: {e(', '.join(map(str, elsewhere)))}" if elsewhere else "") + "</span>")
    return ("<span class=\"ok\">ok</span>" + scope + (f" <span class=\"dim\">{e(tool)}</span>" if tool else "")
            + prov_badge(raw.get("provenance"), "static") + ("<br>" + "<br>".join(lines) if lines else ""))


def _unmapped(unmapped: Any, lead: str) -> str:
    layers = [u for u in unmapped if isinstance(u, Mapping)] if isinstance(unmapped, list) else []
    if not layers:
        return f"<span class=\"fail\">{e(lead)}not mappable</span>"
    items = [f"<code>{e(u.get('layer') or '?')}</code> ({e(u.get('op') or '?')})"
             + (f": {e(u['reason'])}" if u.get("reason") else "") for u in layers]
    plural = "s" if len(layers) != 1 else ""
    head = f"<span class=\"fail\">{e(lead)}{len(layers)} layer{plural} PULPOpen cannot map</span>"
    if len(items) <= 3:
        return head + "<br>" + "<br>".join(items)
    return f"<details><summary>{head}</summary>{'<br>'.join(items)}</details>"


def _estimate_cell(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return DASH
    totals = section(raw, "totals")
    latency_ms, energy, clock = (number(totals.get(k)) for k in ("latency_ms", "energy_mj", "clock_mhz"))
    if latency_ms is None and energy is None:
        return DASH
    head = " · ".join(part for part in (human_ms(latency_ms) if latency_ms is not None else "",
                                        f"{energy:.3g} mJ" if energy is not None else "") if part)
    head += f" @ {clock:g} MHz" if clock is not None else ""
    cycles, per_cycle, power = (number(totals.get(k)) for k in ("cycles", "macs_per_cycle", "power_mw"))
    facts = ", ".join(part for part in (
        f"{human_count(cycles)} cluster cycles" if cycles is not None else "",
        f"{per_cycle:.3g} MAC/cycle" if per_cycle is not None else "",
        f"{power:g} mW" if power is not None else "") if part)
    return (head + prov_badge(raw.get("provenance"), "estimated")
            + (f"<br><span class=\"dim\">{facts}</span>" if facts else "")
            + (f"<br><a href=\"#{_ASSUMPTIONS_ID}\">assumptions</a>" if strings(raw.get("assumptions")) else ""))


def _assumptions(tasks: list[tuple[str, Mapping[str, Any]]]) -> str:
    """One <details> under the table: the estimate's assumptions every task shares, then each task's own, and
    the kernel throughputs with their sources."""
    lists = [(name, strings(section(entry, "cycle_estimate").get("assumptions"))
              or strings(section(entry, "memory_placement").get("assumptions"))) for name, entry in tasks]
    lists = [(name, items) for name, items in lists if items]
    if not lists:
        return ""
    common = [item for item in lists[0][1] if all(item in items for _, items in lists)]
    own = [(name, [item for item in items if item not in common]) for name, items in lists]
    kernels: dict[str, Mapping[str, Any]] = {}
    for _, entry in tasks:
        for name, kernel in section(section(entry, "cycle_estimate"), "kernels").items():
            if isinstance(kernel, Mapping) and number(kernel.get("throughput")) is not None:
                kernels.setdefault(str(name), kernel)
    body = ("<p>Every task:</p><ul>" + "".join(f"<li>{e(item)}</li>" for item in common) + "</ul>"
            if common else "")
    body += "".join(f"<p>{e(name)}:</p><ul>" + "".join(f"<li>{e(item)}</li>" for item in items) + "</ul>"
                    for name, items in own if items)
    if kernels:
        rows = [f"<tr><td>{e(name)}</td><td class=\"n\">{number(kernel['throughput']):g}</td>"
                f"<td>{e(kernel.get('unit') or DASH)}</td><td>{e(kernel.get('source') or DASH)}</td></tr>"
                for name, kernel in kernels.items()]
        body += ("<table><thead><tr><th>Kernel class</th><th>Work per cycle</th><th>Unit</th><th>Source</th></tr>"
                 f"</thead><tbody>{''.join(rows)}</tbody></table>")
    return (f"<details id=\"{_ASSUMPTIONS_ID}\"><summary>Assumptions behind the estimated latency, energy "
            f"and placement</summary>{body}</details>")


def _kit_command(kit: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The harness's make line for this task, run from the bundle: its C folder and prefix from the manifest."""
    folder, c_dir = kit.get("folder"), section(entry, "artifacts").get("c")
    if not isinstance(folder, str) or not isinstance(c_dir, str):
        return DASH
    files = section(entry, "c").get("files")
    prefixes = [f[:-len("_weights.c")] for f in files if isinstance(f, str) and f.endswith("_weights.c")] \
        if isinstance(files, list) else []
    prefix = prefixes[0] if len(prefixes) == 1 else "network"
    command = (f"make -f {folder.rstrip('/')}/Makefile clean all run platform=gvsoc NETWORK_DIR={c_dir}"
               + (f" PREFIX={prefix}" if prefix != "network" else ""))
    return f"<code>{e(command)}</code>"


def _provenance_list(tasks: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Every provenance this section's badges stand for, in full, once."""
    found: dict[str, tuple[Any, list[str]]] = {}
    for _, entry in tasks:
        c = section(entry, "c")
        for label, part in (("C under qemu", section(c, "qemu")), ("arena", section(c, "arena")),
                            ("L2 placement", section(entry, "memory_placement")),
                            ("Deeploy", section(entry, "deeploy")),
                            ("latency · energy", section(entry, "cycle_estimate"))):
            raw = part.get("provenance")
            words = provenance_text(raw)
            if words:
                labels = found.setdefault(words, (raw, []))[1]
                if label not in labels:
                    labels.append(label)
    items = "".join(f"<li>{prov_badge(raw)} {e(', '.join(labels))}: {e(words)}</li>"
                    for words, (raw, labels) in found.items())
    return f"<ul class=\"dim\">{items}</ul>" if items else ""


def _context(tasks: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Published GAP9 figures the estimate ships with, labelled as someone else's measurement of another model."""
    for _, entry in tasks:
        for ref in section(section(entry, "cycle_estimate"), "context").values():
            if not isinstance(ref, Mapping):
                continue
            latency_s, energy, power = (number(ref.get(k)) for k in ("latency_s", "energy_mj", "power_mw"))
            if latency_s is None and energy is None:
                continue
            facts = ", ".join(part for part in (
                human_ms(latency_s * 1e3) if latency_s is not None else "",
                f"{energy:.4g} mJ" if energy is not None else "",
                f"{power:.4g} mW" if power is not None else "") if part)
            params = number(ref.get("parameters"))
            return (f"<p class=\"dim\">For scale, not this model: {e(ref.get('model') or 'a published model')}"
                    + (f" ({human_count(params)} parameters)" if params is not None else "")
                    + f" on {e(ref.get('device') or 'GAP9')}: {facts}"
                    + prov_badge(ref.get("provenance"), "measured") + "</p>")
    return ""


def _task_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    c = section(entry, "c")
    exact = {}
    for where in ("host", "qemu"):
        check = section(c, where)
        if isinstance(check.get("bit_exact"), bool):
            exact[where] = {"bit_exact": check["bit_exact"], "samples": check.get("samples")}
            if where == "qemu":
                exact[where]["provenance"] = check.get("provenance")
        elif check.get("skipped"):
            exact[where] = {"skipped": plain_text(check["skipped"])}
    if exact:
        found["c_bit_exact"] = exact
    estimate = section(entry, "cycle_estimate")
    totals = section(estimate, "totals")
    if number(totals.get("latency_ms")) is not None:
        headline = pick(totals, ("latency_ms", "energy_mj", "cycles", "clock_mhz", "placement")) or {}
        found["mcu_estimate"] = {**headline, "provenance": estimate.get("provenance")}
    return found


# ---------------------------------------------------------------------------------------- the comparison

def _metric(task: TaskInput) -> dict[str, Any] | None:
    name, higher = metric_name(task.entry)
    if name is None:
        return None
    int8 = section(task.entry, "int8")
    data = text(int8.get("metrics_data")) or held_out(task.manifest)
    base = f"manifest.json tasks.{task.task}.int8"
    return metric(name, higher,
                  metric_figure(section(int8, "metric_float").get(name), "PyTorch / ONNX Runtime float", data,
                                f"{base}.metric_float.{name}"),
                  metric_figure(section(int8, "metric_int8").get(name),
                                text(int8.get("metric_int8_source")) or "edgemtl's integer reference executor", data,
                                f"{base}.metric_int8.{name}"),
                  "int8")


def _latencies(name: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    estimate = section(entry, "cycle_estimate")
    totals = section(estimate, "totals")
    median = number(totals.get("latency_ms"))
    if median is None:
        return []
    clock = number(totals.get("clock_mhz"))
    return [latency(median, None, RUNTIME, prov(
        "estimated", source=f"manifest.json tasks.{name}.cycle_estimate.totals",
        detail=provenance_text(estimate.get("provenance")),
        device="GAP9 8-core cluster" + (f" at {clock:g} MHz" if clock else "")))]


def _memory(name: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The static arena first (exact), then the estimated L2 use."""
    found = []
    arena = section(section(entry, "c"), "arena")
    if (arena_bytes := number(arena.get("arena_bytes"))) is not None:
        found.append(figure(arena_bytes, "B", "static", source=f"manifest.json tasks.{name}.c.arena.arena_bytes",
                            detail=provenance_text(arena.get("provenance")) or "liveness plan",
                            device="GAP9 L2 (one static activation arena)", what="activation arena"))
    placement = section(entry, "memory_placement")
    if (used := number(placement.get("l2_used_bytes"))) is not None:
        capacity = number(placement.get("l2_bytes"))
        found.append(figure(used, "B", "estimated", source=f"manifest.json tasks.{name}.memory_placement",
                            detail=f"{text(placement.get('status'))}: arena + weights + code allowance + staging; "
                                   f"{provenance_text(placement.get('provenance'))}",
                            device="GAP9 L2" + (f" of {capacity:,.0f} B" if capacity else ""),
                            what="L2 used (arena, weights, code, staging)"))
    return found


def _weights(name: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    weights = number(section(entry, "memory_placement").get("weight_bytes"))
    if weights is None:
        return None
    return figure(weights, "B", "static", source=f"manifest.json tasks.{name}.memory_placement.weight_bytes",
                  detail="int8 weights and int32 requantisation parameters, as the generated C stores them",
                  device="GAP9 (const arrays in the generated C)", what="weights")


def _energy(name: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    estimate = section(entry, "cycle_estimate")
    totals = section(estimate, "totals")
    energy = number(totals.get("energy_mj"))
    if energy is None:
        return None
    power = number(totals.get("power_mw"))
    return figure(energy, "mJ", "estimated", source=f"manifest.json tasks.{name}.cycle_estimate.totals.energy_mj",
                  detail=(f"{power:g} mW x estimated latency; " if power else "")
                  + provenance_text(estimate.get("provenance")), device="GAP9 cluster")


def _instructions(name: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    qemu = section(section(entry, "c"), "qemu")
    count = number(section(section(qemu, "instructions"), "totals").get("instructions"))
    if count is None:
        return None
    return figure(count, "instructions", "simulated", source=f"manifest.json tasks.{name}.c.qemu.instructions.totals",
                  detail=provenance_text(qemu.get("provenance")) + "; retired instructions, not cycles",
                  device=_QEMU_DEVICE)


def _layers(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The per-layer cycle estimate (with each layer's qemu instructions beside it), the most expensive first."""
    costs = mcu_layer_costs(entry)
    if not costs:
        return {"none": "the manifest has no per-layer estimate or qemu instruction counts"}
    estimate = section(entry, "cycle_estimate")
    clock = number(section(estimate, "totals").get("clock_mhz"))
    names = {row.get("index"): row.get("name") for row in estimate.get("layers") or [] if isinstance(row, Mapping)}
    total = sum(cycles or 0.0 for _, _, cycles, _ in costs)
    rows = [{"name": names.get(index) or label, "op": label.split(" ", 1)[-1], "cycles": cycles,
             "ms": cycles / (clock * 1e3) if cycles is not None and clock else None,
             "share": cycles / total if cycles is not None and total else None, "instructions": count}
            for index, label, cycles, count in costs]
    rows.sort(key=lambda row: row["cycles"] or 0.0, reverse=True)
    return {"source": "gap9 estimate + qemu", "nodes": len(costs), "total_cycles": total, "layers": rows[:TOP_LAYERS],
            "provenance": prov("estimated", source=f"manifest.json tasks.{name}.cycle_estimate.layers",
                               detail=provenance_text(estimate.get("provenance")), device="GAP9 8-core cluster"),
            "instructions_provenance": prov("simulated",
                                            source=f"manifest.json tasks.{name}.c.qemu.instructions.layers",
                                            detail="retired instructions, not cycles", device=_QEMU_DEVICE)}
