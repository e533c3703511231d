"""FPGA targets (the fpga-hls4ml flow): per task the precision, the metric before and after quantization, the
exported graphs' and the HLS C simulation's agreement, FINN's and edgemtl's roofline estimates, and the board kit
(an MoE model: its int8 metric and edgemtl's HLS C++ with its C simulation instead of QAT, QONNX, hls4ml and FINN);
on the comparison page the quantized metric, the roofline's latency, throughput, on-chip RAM, weights and layers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemtl.manifest import figure, prov, provenance_text
from edgemtl.report.figures import TOP_LAYERS, held_out, latency, metric, metric_figure, metric_name, text
from edgemtl.report.fmt import DASH, artifact_link, e, figures_html, human_count, human_ms, human_seconds, prov_words
from edgemtl.report.fpga_plots import fpga_resource_plot, part_totals
from edgemtl.report.read import number, section, target_flow, task_entries
from edgemtl.report.sections import Figures, TaskInput

FLOW = "fpga-hls4ml"
RUNTIME = "fpga-dataflow"
_RUNTIME_TEXT = "hls4ml dataflow IP on the FPGA fabric (quantized)"
_HLS_CPP_TEXT = "edgemtl HLS C++ IP on the FPGA fabric (int8)"
_BRAM18_BYTES, _URAM_BYTES = 18 * 1024 / 8, 288 * 1024 / 8
PLOTS = (("FPGA resources per task as % of the ZCU104 (XCZU7EV), estimated by FINN at each target fps and by edgemtl's "
          "roofline (not synthesised; its MAC array spans every DSP by design); dashed: fit limits LUT 70 %, "
          "BRAM18 80 %, DSP 80 %", fpga_resource_plot),)


def applies(manifest: Mapping[str, Any]) -> bool:
    return target_flow(manifest) == FLOW or bool(_tasks(manifest))


def render(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    tasks = _tasks(manifest)
    if not tasks:
        return ""
    target = section(manifest, "target").get("name")
    parts = [f"<h2>FPGA{f' ({e(target)})' if target else ''}: quantization, HLS C simulation and estimates</h2>"]
    for name, entry in tasks:
        quant, check = section(entry, "quantization"), section(entry, "export_check")
        roofline = section(entry, "roofline")
        if isinstance(entry.get("hls_cpp"), Mapping):  # an MoE model: int8 and edgemtl's HLS C++, not hls4ml
            rows = [("Precision", e(roofline.get("precision") or DASH) + " <span class=\"dim\">int8 integer graph, no QAT</span>"),
                    ("Metric, float → int8", _metric_cell(entry, _int8_metrics(entry))),
                    *_hls_cpp_rows(section(entry, "hls_cpp")), ("edgemtl roofline", _roofline_cell(roofline))]
        else:
            rows = [("Precision", e(quant.get("precision") or roofline.get("precision") or DASH)
                     + (f" <span class=\"dim\">QAT {steps:.0f} steps</span>"
                        if (steps := number(quant.get("qat_steps"))) is not None else "")),
                    ("Metric, float → quantized", _metric_cell(entry, quant)),
                    ("Exported graphs vs brevitas, max diff (QONNX / QCDQ in ONNX Runtime)", _lsb_pair(check)),
                    *_hls_rows(section(entry, "hls4ml"), entry.get("hls4ml")),
                    *_finn_rows(entry.get("finn"), part_totals(manifest).get("lut")),
                    ("edgemtl roofline", _roofline_cell(roofline))]
        body = "".join(f"<tr><td>{e(label)}</td><td>{value}</td></tr>" for label, value in rows)
        parts.append(f"<h3>{e(name)}</h3>\n<table><thead><tr><th>Quantity</th><th>Value</th></tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    switchable = section(section(manifest, "moe"), "switchable_hls")
    if switchable:
        body = "".join(f"<tr><td>{e(label)}</td><td>{value}</td></tr>" for label, value in _switchable_rows(switchable))
        parts.append("<h3>One design serving every task</h3>\n<table><thead><tr><th>Quantity</th><th>Value</th></tr>"
                     f"</thead><tbody>{body}</tbody></table>")
    needs = manifest.get("needs_other_toolchain")
    for need in needs if isinstance(needs, list) else []:
        step, why = (need.get("step"), need.get("why")) if isinstance(need, Mapping) else (None, need)
        parts.append(f"<p><strong>Needs another toolchain{f': {e(step)}' if step else ''}</strong>"
                     f"{f' — {e(why)}' if why else ''}</p>")
    kit = section(manifest, "board_kit")
    if isinstance(kit.get("readme"), str):
        parts.append(f"<p>Synthesis, bitstream and the board (Vitis HLS / Vivado and a ZCU104): see "
                     f"{artifact_link(kit['readme'], None)}"
                     + (f"; next: <code>{e(kit['next'])}</code>" if isinstance(kit.get("next"), str) else "")
                     + ".</p>")
    return "\n".join(parts + figures_html(PLOTS, manifest))


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def compare_figures(task: TaskInput) -> Figures:
    entry, name = task.entry, task.task
    runtime = task.runtime or RUNTIME
    roofline = section(entry, "roofline")
    own_hls = isinstance(entry.get("hls_cpp"), Mapping)
    found: Figures = {"runtime": {"value": runtime, "text": runtime if runtime != RUNTIME else
                                  _HLS_CPP_TEXT if own_hls else _RUNTIME_TEXT,
                                  "chosen_by": "the zcu104 flow's only deployment path"},
                      "latencies": _latencies(name, entry), "memory": _memory(name, entry),
                      "layers": _layers(name, entry)}
    fps = number(roofline.get("fps"))
    if fps is not None:
        found["throughput"] = figure(fps, "inferences/s", "estimated",
                                     source=f"manifest.json tasks.{name}.roofline.fps",
                                     detail=provenance_text(roofline.get("provenance")),
                                     device=f"{text(roofline.get('target')) or 'FPGA'} fabric")
    quantized = _metric(task)
    if quantized is not None:
        found["metric"] = quantized
    size = _weights(name, roofline)
    if size is not None:
        found["model_size"] = size
    return found


def _tasks(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(name, entry) for name, entry in task_entries(manifest).items()
            if isinstance(entry.get("quantization"), Mapping) or isinstance(entry.get("roofline"), Mapping)]


# ------------------------------------------------------------------------------------------------ the page

def _metric_cell(entry: Mapping[str, Any], quant: Mapping[str, Any]) -> str:
    before, after = section(quant, "metric_float"), section(quant, "metric_quant")
    primary = entry.get("primary_metric")
    name = primary if isinstance(primary, str) and primary in before else next(iter(before), None)
    if name is None:
        return DASH
    old, new = number(before.get(name)), number(after.get(name))
    shown = f"{e(name)} {f'{old:.4g}' if old is not None else DASH} → {f'{new:.4g}' if new is not None else DASH}"
    if old is None or new is None:
        return shown
    return shown + f" <span class=\"dim\">({f'Δ {new - old:+.3g}' if new != old else 'unchanged'})</span>"


def _int8_metrics(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The int8 record's metrics under the quantization record's names (`_metric_cell` reads either)."""
    int8 = section(entry, "int8")
    return {"metric_float": int8.get("metric_float"), "metric_quant": int8.get("metric_int8")}


def _hls_cpp_rows(hls: Mapping[str, Any]) -> list[tuple[str, str]]:
    if hls.get("ok") is not True:
        return [("HLS C++ (edgemtl)", f"<span class=\"fail\">failed</span>: {e(hls.get('error') or 'no reason recorded')}")]
    csim = section(hls, "csim")
    diff, samples = number(csim.get("max_lsb_difference")), number(csim.get("samples"))
    if diff is None:
        result = f"<span class=\"dim\">not run: {e(csim.get('reason') or 'no record')}</span>"
    else:
        result = (f"{diff:.0f} LSB <span class=\"{'ok' if diff <= 1 else 'fail'}\">{'✓' if diff <= 1 else '✗'}</span>"
                  + (f" <span class=\"dim\">on {samples:.0f} samples</span>" if samples is not None else "")
                  + " " + prov_words(csim.get("provenance"), "simulated"))
    project = f" <code>{e(hls['project'])}</code>" if isinstance(hls.get("project"), str) else ""
    return [("HLS C++ (edgemtl)", f"<span class=\"ok\">ok</span>{project}"),
            ("C simulation vs int8 reference, max diff", result),
            ("HLS C++ design, resources and latency", _design_estimate(section(hls, "estimate")))]


def _switchable_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The design serving every task (moe.switchable_hls): what it shares, its C simulation across task switches,
    the first inference after a switch, its estimate."""
    if record.get("ok") is not True:
        return [("HLS C++ (edgemtl)", f"<span class=\"dim\">not built</span>: {e(record.get('error') or 'no reason recorded')}")]
    ids = section(record, "task_ids")
    switched = section(record, "switched_nodes")
    rows = [("HLS C++ (edgemtl)", f"<span class=\"ok\">ok</span> <code>{e(record.get('project') or DASH)}</code>, top "
                                  f"<code>{e(record.get('top') or DASH)}</code>; task register: "
                                  + ", ".join(f"{e(t)} = {e(str(k))}" for t, k in ids.items())),
            ("Layers", f"{e(str(record.get('shared_nodes', DASH)))} shared, "
                       + (f"{len(switched)} with a call per task form ({', '.join(e(n) for n in switched)})"
                          if switched else "none with a call per task")
                       + f", heads: {', '.join(f'{e(t)} {n}' for t, n in section(record, 'task_only_nodes').items())}")]
    for layer, experts in section(record, "expert_rows").items():
        per_task = section(experts, "per_task")
        rows.append((f"Experts of {layer}", f"{e(str(experts.get('stored', DASH)))} stored once; per task "
                                            + ", ".join(f"{e(t)} {n}" for t, n in per_task.items())))
    rom, separate = number(record.get("rom_bytes")), number(record.get("per_task_designs_rom_bytes"))
    if rom is not None and separate:
        rows.append(("ROM bytes, this design / the per-task designs together",
                     f"{human_count(rom)} / {human_count(separate)} ({rom / separate:.2f}x) "
                     + prov_words(record.get("rom_provenance"), "static")))
    csim = section(record, "csim")
    worst = section(csim, "max_lsb_difference")
    if worst:
        diff = max(number(v) or 0 for v in worst.values())
        rows.append(("C simulation vs every task's int8 reference, tasks interleaved",
                     f"{diff:.0f} LSB <span class=\"{'ok' if diff <= 1 else 'fail'}\">{'✓' if diff <= 1 else '✗'}</span> "
                     f"<span class=\"dim\">{number(csim.get('runs')) or 0:.0f} runs</span> "
                     + prov_words(csim.get("provenance"), "simulated")))
    else:
        rows.append(("C simulation", f"<span class=\"dim\">not run: {e(csim.get('reason') or 'no record')}</span>"))
    ratio = number(section(record, "switching").get("max_ratio"))
    if ratio is not None:
        rows.append(("First inference after a task switch / steady state (cycles, worst task)",
                     f"{ratio:.3f}x " + prov_words(section(record, "switching").get("provenance"), "simulated")))
    rows.append(("HLS C++ design, resources and latency", _design_estimate(section(record, "estimate"))))
    return rows


def _design_estimate(estimate: Mapping[str, Any]) -> str:
    """The generated design's estimated LUT / DSP / BRAM18 (share of the part) and latency per inference."""
    share = section(estimate, "utilisation")
    parts = [f"{label} {human_count(value)} ({number(share.get(key)):.1%})" for label, key in
             (("LUT", "lut"), ("DSP", "dsp"), ("BRAM18", "bram18"))
             if (value := number(estimate.get(key))) is not None and number(share.get(key)) is not None]
    if not parts:
        return DASH
    latency = number(estimate.get("latency_ms"))
    fits = estimate.get("fits")
    return (", ".join(parts) + (f"; {latency:.3g} ms per inference" if latency is not None else "")
            + ("" if fits is None else f" <span class=\"{'ok' if fits else 'fail'}\">{'fits' if fits else 'does not fit'}</span>")
            + " " + prov_words(estimate.get("provenance"), "estimated"))


def _lsb_pair(check: Mapping[str, Any]) -> str:
    values = [number(check.get(key)) for key in ("qonnx_max_diff_lsb", "onnxruntime_max_diff_lsb")]
    if all(value is None for value in values):
        return DASH
    samples = number(check.get("samples"))
    return (" / ".join(f"{value:.3g}" if value is not None else DASH for value in values) + " LSB"
            + (f" <span class=\"dim\">on {samples:.0f} samples</span>" if samples is not None else ""))


def _hls_rows(hls: Mapping[str, Any], raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, Mapping):
        return [("hls4ml", "<span class=\"dim\">not run</span>")]
    if hls.get("ok") is not True:
        return [("hls4ml", f"<span class=\"fail\">failed</span>: {e(hls.get('error') or 'no reason recorded')}")]
    seconds = number(hls.get("seconds"))
    rows = [("hls4ml", "<span class=\"ok\">ok</span>"
             + (f" <code>{e(hls['project'])}</code>" if isinstance(hls.get("project"), str) else "")
             + (f" <span class=\"dim\">{human_seconds(seconds)}</span>" if seconds is not None else ""))]
    csim, bench = section(hls, "csim"), section(hls, "testbench")
    diff, samples = number(csim.get("max_abs_diff_lsb")), number(csim.get("samples"))
    passed = csim.get("passed")
    rows.append(("C simulation vs quantized model, max diff",
                 (f"{diff:.3g} LSB" if diff is not None else DASH)
                 + (f" <span class=\"{'ok' if passed else 'fail'}\">{'✓' if passed else '✗'}</span>"
                    if isinstance(passed, bool) else "")
                 + (f" <span class=\"dim\">on {samples:.0f} samples</span>" if samples is not None else "")
                 + (" " + prov_words(csim.get("provenance"), "simulated") if diff is not None else "")))
    built, reason, matches = bench.get("built"), bench.get("reason"), bench.get("matches_csim")
    rows.append(("Testbench built (g++)",
                 (DASH if not isinstance(built, bool) else
                  "<span class=\"ok\">yes</span>" if built else "<span class=\"fail\">no</span>")
                 + ("; its run matches the C simulation" if matches is True else
                    "; its run <span class=\"fail\">differs from</span> the C simulation" if matches is False else "")
                 + (f" <span class=\"dim\">{e(reason)}</span>" if isinstance(reason, str) and reason else "")))
    return rows


def _finn_rows(raw: Any, part_lut: float | None) -> list[tuple[str, str]]:
    if not isinstance(raw, Mapping):
        return [("FINN", DASH)]
    if raw.get("available") is False:
        how = raw.get("how_to_create")
        return [("FINN", f"<span class=\"dim\">not available: {e(raw.get('reason') or 'no FINN environment')}"
                         f"{f'; create it with <code>{e(how)}</code>' if how else ''}</span>")]
    by_fps = raw.get("by_target_fps")
    if raw.get("ok") is not True or not isinstance(by_fps, Mapping) or not by_fps:
        return [("FINN", f"<span class=\"fail\">no estimate</span>: {e(raw.get('reason') or 'none recorded')}")]
    rows = []
    for key, fold in by_fps.items():
        fold = fold if isinstance(fold, Mapping) else {}
        fps, latency_ms, lut = (number(fold.get(k)) for k in ("estimated_fps", "latency_ms", "lut"))
        share = lut / part_lut if lut is not None and part_lut else number(section(fold, "utilisation").get("lut"))
        meets = fold.get("meets_target")
        value = ", ".join(part for part in (
            f"{fps:,.0f} fps" + (f" <span class=\"{'ok' if meets else 'fail'}\">{'meets' if meets else 'misses'} "
                                 "target</span>" if isinstance(meets, bool) else "") if fps is not None else "",
            f"latency {human_ms(latency_ms)}" if latency_ms is not None else "",
            f"LUT {share:.1%}" if share is not None else "") if part) or DASH
        target = number(fold.get("target_fps"))
        rows.append((f"FINN @ {f'{target:,.0f}' if target is not None else key} fps target",
                     f"{value} {prov_words(fold.get('provenance') or raw.get('provenance'), 'estimated')}"))
    return rows


def _roofline_cell(roofline: Mapping[str, Any]) -> str:
    fps, latency_ms = number(roofline.get("fps")), number(roofline.get("latency_ms"))
    if fps is None and latency_ms is None:
        return DASH
    fits = section(roofline, "resources").get("fits")
    return (", ".join(part for part in (f"{fps:,.0f} fps" if fps is not None else "",
                                        f"latency {human_ms(latency_ms)}" if latency_ms is not None else "") if part)
            + (f" <span class=\"{'ok' if fits else 'fail'}\">{'fits' if fits else 'does not fit'}</span>"
               if isinstance(fits, bool) else "")
            + " " + prov_words(roofline.get("provenance"), "estimated"))


# ---------------------------------------------------------------------------------------- the comparison

def _metric(task: TaskInput) -> dict[str, Any] | None:
    quant = section(task.entry, "quantization")
    key, after_key, runtime, label = "quantization", "metric_quant", "brevitas quantized model (QAT)", text(quant.get("precision"))
    if not quant:  # an MoE model: the int8 integer graph's metric
        quant = section(task.entry, "int8")
        key, after_key, runtime, label = "int8", "metric_int8", "edgemtl int8 reference executor", "int8"
    before, after = section(quant, "metric_float"), section(quant, after_key)
    name, higher = metric_name(task.entry)
    name = name if name in before else next(iter(before), None)
    if not quant or name is None:
        return None
    base, data = f"manifest.json tasks.{task.task}.{key}", held_out(task.manifest)
    return metric(name, higher, metric_figure(before.get(name), "PyTorch float", data, f"{base}.metric_float.{name}"),
                  metric_figure(after.get(name), runtime, data, f"{base}.{after_key}.{name}"), label or "quantized")


def _latencies(name: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    roofline = section(entry, "roofline")
    if (median := number(roofline.get("latency_ms"))) is not None:
        found.append(latency(median, None, RUNTIME, prov(
            "estimated", source=f"manifest.json tasks.{name}.roofline",
            detail=provenance_text(roofline.get("provenance")),
            device=f"{text(roofline.get('target')) or 'FPGA'} fabric, {text(roofline.get('precision'))}")))
    finn = section(entry, "finn")
    for key, fold in section(finn, "by_target_fps").items():
        if isinstance(fold, Mapping) and (median := number(fold.get("latency_ms"))) is not None:
            found.append(latency(median, None, f"{RUNTIME} (FINN folding for {key} fps)", prov(
                "estimated", source=f"manifest.json tasks.{name}.finn.by_target_fps.{key}",
                detail=provenance_text(fold.get("provenance") or finn.get("provenance")), device="FPGA fabric (FINN)")))
    return found


def _memory(name: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    resources = section(section(entry, "roofline"), "resources")
    bram, uram = number(resources.get("bram18")), number(resources.get("uram"))
    if bram is None and uram is None:
        return []
    on_chip = (bram or 0.0) * _BRAM18_BYTES + (uram or 0.0) * _URAM_BYTES
    return [figure(on_chip, "B", "estimated", source=f"manifest.json tasks.{name}.roofline.resources",
                   detail=f"BRAM18 {bram or 0:g} x 2,304 B + URAM {uram or 0:g} x 36,864 B; "
                          f"{provenance_text(resources.get('provenance'))}",
                   device="FPGA on-chip RAM", what="on-chip RAM (BRAM + URAM)")]


def _weights(name: str, roofline: Mapping[str, Any]) -> dict[str, Any] | None:
    layers = roofline.get("layers")
    if not isinstance(layers, list) or not layers:
        return None
    total = sum(number(layer.get("weight_bytes")) or 0.0 for layer in layers if isinstance(layer, Mapping))
    return figure(total, "B", "estimated", source=f"manifest.json tasks.{name}.roofline.layers[].weight_bytes",
                  detail="weights x weight bits, per the roofline's layers",
                  device="FPGA weights at " + (text(roofline.get("precision")) or "?"), what="weights")


def _layers(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    roofline = section(entry, "roofline")
    layers = [layer for layer in roofline.get("layers") or [] if isinstance(layer, Mapping)
              and number(layer.get("latency_s")) is not None]
    if not layers:
        return {"none": "the manifest has no per-layer roofline"}
    total = sum(number(layer["latency_s"]) or 0.0 for layer in layers)
    rows = [{"name": layer.get("name"), "op": layer.get("kind"), "ms": number(layer["latency_s"]) * 1e3,
             "share": number(layer["latency_s"]) / total if total else None, "bound": layer.get("bound")}
            for layer in layers]
    rows.sort(key=lambda row: row["ms"], reverse=True)
    return {"source": "fpga roofline", "nodes": len(layers), "layers": rows[:TOP_LAYERS],
            "provenance": prov("estimated", source=f"manifest.json tasks.{name}.roofline.layers",
                               detail=provenance_text(roofline.get("provenance")), device="FPGA fabric")}
