"""C simulation of a compiled hls4ml project (`hls_predict`, `csim_check`: equal to the quantized model, value for
value) and the project's generated C++ testbench built with plain g++ (`build_testbench`), both on NCHW data in the
quantized model's layout (the HLS top function's NHWC is transposed here; hls4ml_backend.py's docstring).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemtl.backends.hls4ml_graph import _one_line, _quiet
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.manifest import prov

if TYPE_CHECKING:
    from edgemtl.backends.hls4ml_backend import HlsProject

PROJECT_NAME = "myproject"  # the name hls4ml gives the project's files (myproject.cpp, myproject_test.cpp ...)
# The RESULTS_LOG stream of hls4ml's testbench, whose default 6 significant digits would round the outputs.
_TB_LOG_STREAM = "std::ofstream fout(RESULTS_LOG);"
# A constant-factor error: the least-squares scale hls ~ s * reference is off 1 by more than this ...
CONSTANT_FACTOR_TOLERANCE = 1e-2
# ... fits the HLS output to within this relative residual (quantization noise aside) ...
CONSTANT_FACTOR_FIT = 0.1
# ... and explains the error: |hls - s ref| is at most this fraction of |hls - ref| (an offset is not a factor).
CONSTANT_FACTOR_EXPLAINS = 0.3


def csim_provenance(samples: int) -> dict[str, str]:
    return prov("simulated", source="hls4ml C simulation",
                detail=f"bit-accurate: equal to the quantized model on {samples} samples")


def _per_output(value: Any, outputs: list[str], what: str, task: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        missing = [o for o in outputs if o not in value]
        if missing:
            raise EdgemtlError(f"task {task!r}: {what} has no entry for output(s) {', '.join(missing)}")
        return {o: value[o] for o in outputs}
    if isinstance(value, (list, tuple)):
        if len(value) != len(outputs):
            raise EdgemtlError(f"task {task!r}: {what} has {len(value)} entries for {len(outputs)} outputs")
        return dict(zip(outputs, value))
    if len(outputs) != 1 and what == "reference":
        raise EdgemtlError(f"task {task!r}: the HLS model has {len(outputs)} outputs ({', '.join(outputs)}): "
                           "pass the reference as a dict by output name")
    return {o: value for o in outputs}


def _hls_inputs(project: HlsProject, inputs: np.ndarray) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float64)
    if x.shape[1:] != project.input_shape:
        raise EdgemtlError(f"task {project.task!r}: csim inputs have shape {x.shape[1:]} per sample, "
                           f"the graph takes {project.input_shape} (NCHW)")
    if project.input_channels_last:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x.reshape(x.shape[0], -1))


def _from_hls(project: HlsProject, name: str, flat: np.ndarray) -> np.ndarray:
    shape = project.output_shapes[name]
    n = flat.shape[0]
    if project.output_channels_last.get(name) and len(shape) == 3:
        c, h, w = shape
        return flat.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return flat.reshape(n, *shape)


def hls_predict(project: HlsProject, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run the compiled C simulation on NCHW float inputs; outputs by name in the quantized model's layout."""
    x = _hls_inputs(project, inputs)
    with _quiet(io.StringIO()):
        raw = project.hls_model.predict(x)
    if len(project.outputs) == 1:
        raw = [raw]
    result = {}
    for name, values in zip(project.outputs, raw):
        result[name] = _from_hls(project, name, np.asarray(values, dtype=np.float64).reshape(x.shape[0], -1))
    return result


def constant_factor(hls: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Least-squares s in hls ~ s * reference; the residual |hls - s ref| relative to |hls| and to the error
    |hls - ref| (small for a scale error, near 1 for an offset or noise)."""
    h, r = np.ravel(hls).astype(np.float64), np.ravel(reference).astype(np.float64)
    rr = float(r @ r)
    if rr == 0.0 or not np.any(h):
        return 1.0, 0.0, 1.0
    s = float(h @ r) / rr
    residual = float(np.linalg.norm(h - s * r))
    error = float(np.linalg.norm(h - r))
    return s, residual / float(np.linalg.norm(h)), (residual / error if error else 1.0)


def csim_check(project: HlsProject, inputs: np.ndarray, reference: Any, lsb: Any, task: str) -> dict[str, Any]:
    """Check that the HLS C simulation equals the quantized model's outputs, value for value, on NCHW inputs.

    `reference`: an array for a one-output graph, else a dict by output name (or a list in `project.outputs`
    order), in the quantized model's layout; `lsb`: the output quantizer's step (float, or per output), to
    report differences in. Equality, not a tolerance: both sides are integers times a power-of-two step, so
    any difference is a real rounding difference. Raises one EdgemtlError line on a constant-factor error (a
    non-power-of-two scale) or any difference; returns samples, max_abs_diff_lsb (0; per sample / output),
    exact, bound_lsb (0), passed, seconds, provenance (naming the sample count).
    """
    start = time.perf_counter()
    refs = _per_output(reference, project.outputs, "reference", task)
    refs = {k: np.asarray(v, dtype=np.float64) for k, v in refs.items()}
    lsbs = {k: float(v) for k, v in _per_output(lsb, project.outputs, "lsb", task).items()}
    x = np.asarray(inputs)
    if x.ndim == len(project.input_shape):
        x = x[None]
    got = hls_predict(project, x)
    samples = x.shape[0]
    if samples == 0:
        raise EdgemtlError(f"task {task!r}: the C simulation check needs at least one sample")
    per_output: dict[str, Any] = {}
    per_sample = np.zeros(samples)
    differing = {}
    for name in project.outputs:
        ref, out, step = refs[name], got[name], lsbs[name]
        if ref.shape != out.shape:
            if ref.size == out.size:
                ref = ref.reshape(out.shape)
            else:
                raise EdgemtlError(f"task {task!r}: reference for {name!r} has shape {ref.shape}, "
                                   f"the HLS model gives {out.shape}")
        if step <= 0:
            raise EdgemtlError(f"task {task!r}: the output LSB for {name!r} must be positive, got {step}")
        diff = np.abs(out - ref) / step
        sample_max = diff.reshape(samples, -1).max(axis=1)
        per_sample = np.maximum(per_sample, sample_max)
        differing[name] = int(np.count_nonzero(out != ref))
        scale, residual, unexplained = constant_factor(out, ref)
        per_output[name] = {"max_abs_diff_lsb": float(sample_max.max()), "values": int(out.size),
                            "differing_values": differing[name],
                            "per_sample_max_abs_diff_lsb": [float(v) for v in sample_max],
                            "scale": scale, "fit_residual": residual}
        if (abs(scale - 1.0) > CONSTANT_FACTOR_TOLERANCE and residual < CONSTANT_FACTOR_FIT
                and unexplained < CONSTANT_FACTOR_EXPLAINS and differing[name]):
            suspects = project.non_power_of_two_quants
            where = f" (Quant nodes {', '.join(suspects[:3])})" if suspects else ""
            raise VerificationError(
                f"task {task!r}: the HLS C simulation differs from the quantized model by a constant factor "
                f"{scale:.4g} (output {name!r}, least-squares fit residual {residual:.1%}, max error "
                f"{sample_max.max():.0f} LSB over {samples} samples); a quantizer scale is not a power of two"
                f"{where}: use brevitas fixed-point quantizers (Int8ActPerTensorFixedPoint, "
                "Int8WeightPerTensorFixedPoint)")
    worst = float(per_sample.max())
    seconds = time.perf_counter() - start
    project.last_csim = {"inputs": np.asarray(x, dtype=np.float64), "outputs": got}
    if any(differing.values()):
        name = max(per_output, key=lambda k: (per_output[k]["max_abs_diff_lsb"], differing[k]))
        raise VerificationError(f"task {task!r}: the HLS C simulation differs from the quantized model by up to "
                           f"{worst:.3g} LSB in {differing[name]} of {per_output[name]['values']} values of output "
                           f"{name!r} ({samples} samples; it must be bit-accurate, 0 LSB): {_mismatch_cause(project)}")
    return {"samples": int(samples), "max_abs_diff_lsb": worst, "exact": True, "bound_lsb": 0.0,
            "per_sample_max_abs_diff_lsb": [float(v) for v in per_sample], "outputs": per_output,
            "passed": True, "seconds": seconds, "provenance": csim_provenance(int(samples))}


def _mismatch_cause(project: HlsProject) -> str:
    if project.non_power_of_two_quants:
        return (f"quantizer scales that are not powers of two ({', '.join(project.non_power_of_two_quants[:3])}) "
                "are not exact in hls4ml")
    if project.float_biases:
        return (f"float biases ({', '.join(project.float_biases[:3])}) are rounded to {project.default_precision} "
                "in hls4ml: quantize them (brevitas Int32Bias)")
    return f"check the per-layer precision in {project.out_dir}/hls4ml_config.yml"


def write_tb_data(project: HlsProject, inputs: np.ndarray, outputs: Mapping[str, np.ndarray]) -> Path:
    """tb_data/tb_input_features.dat and tb_output_predictions.dat, one sample a line, in the HLS layout
    (what `InputData` / `OutputPredictions` would make; the outputs concatenated in top-function order)."""
    folder = project.out_dir / "tb_data"
    folder.mkdir(exist_ok=True)
    x = _hls_inputs(project, inputs)
    flat = []
    for name in project.outputs:
        y = np.asarray(outputs[name], dtype=np.float64)
        if project.output_channels_last.get(name) and y.ndim == 4:
            y = y.transpose(0, 2, 3, 1)
        flat.append(y.reshape(y.shape[0], -1))
    y = np.concatenate(flat, axis=1)
    for path, data in ((folder / "tb_input_features.dat", x), (folder / "tb_output_predictions.dat", y)):
        path.write_text("".join(" ".join(repr(float(v)) for v in row) + " \n" for row in data))
    return folder


def build_testbench(project: HlsProject, inputs: np.ndarray | None = None,
                    outputs: Mapping[str, np.ndarray] | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """Build `myproject_test.cpp` with plain g++ against the bundled ap_types and run it on tb_data.

    Data: `inputs` (NCHW) and `outputs` (by name) if given, else those of the last `csim_check`. The
    testbench is built from a copy whose results log prints every digit (hls4ml's prints 6 significant
    ones), so its run is compared with the C simulation for equality: `matches_csim` is True only when every
    sample's every value is equal, else False with `tb_reason` when the run gave nothing comparable.
    Without g++ (or when g++ fails), returns {"built": False, "reason": ...}.
    """
    gxx = shutil.which("g++")
    if gxx is None:
        return {"built": False, "ran": False, "reason": "g++ not found on PATH"}
    out_dir = project.out_dir
    test_cpp = out_dir / f"{PROJECT_NAME}_test.cpp"
    if not test_cpp.is_file():
        return {"built": False, "ran": False, "reason": f"{test_cpp} missing (hls4ml wrote no testbench)"}
    source = test_cpp.read_text()
    if _TB_LOG_STREAM not in source:
        return {"built": False, "ran": False,
                "reason": f"{test_cpp} has no {_TB_LOG_STREAM!r} to print exact results from (another hls4ml?)"}
    exact_cpp = out_dir / f"{PROJECT_NAME}_test_exact.cpp"
    exact_cpp.write_text(source.replace(_TB_LOG_STREAM, f"{_TB_LOG_STREAM} fout.precision(1000);", 1))
    expected = None
    if inputs is not None:
        expected = dict(outputs) if outputs is not None else hls_predict(project, inputs)
        write_tb_data(project, inputs, expected)
    elif project.last_csim is not None:
        expected = project.last_csim["outputs"]
        write_tb_data(project, project.last_csim["inputs"], expected)
    has_data = (out_dir / "tb_data" / "tb_input_features.dat").is_file()
    log = out_dir / "tb_data" / "csim_results.log"
    log.unlink(missing_ok=True)  # a log from an earlier run must not stand in for this one

    start = time.perf_counter()
    binary = out_dir / "tb_csim"
    weights = out_dir / "firmware" / "weights"
    cmd = [gxx, "-O2", "-std=c++14", f"-I{out_dir / 'firmware' / 'ap_types'}", f"-I{out_dir}",
           f'-DWEIGHTS_DIR="{weights}"', str(exact_cpp), str(out_dir / "firmware" / f"{PROJECT_NAME}.cpp"),
           "-o", str(binary)]
    build = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True, timeout=timeout_s)
    build_s = time.perf_counter() - start
    result: dict[str, Any] = {"built": build.returncode == 0, "ran": False, "build_seconds": build_s,
                              "compiler": gxx, "command": " ".join(cmd), "has_tb_data": has_data}
    if build.returncode != 0:
        result["reason"] = "g++ failed: " + _one_line(build.stderr or build.stdout, 400)
        return result
    start = time.perf_counter()
    run = subprocess.run([str(binary)], cwd=out_dir, capture_output=True, text=True, timeout=timeout_s)
    result.update(ran=True, exit_status=run.returncode, run_seconds=time.perf_counter() - start,
                  seconds=build_s + time.perf_counter() - start, stdout_tail=run.stdout[-2000:])
    if run.returncode != 0:
        result.update(matches_csim=False, tb_reason=f"it exited with status {run.returncode}")
    elif not has_data or expected is None:
        result.update(matches_csim=False, tb_reason="no tb_data to run on (run csim_check first or pass inputs)")
    elif not log.is_file():
        result.update(matches_csim=False, tb_reason=f"it wrote no {log.relative_to(out_dir)}")
    else:
        result.update(_compare_tb_log(project, log, expected))
    return result


def _compare_tb_log(project: HlsProject, log: Path, expected: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """csim_results.log: one line per output per sample, in top-function order, HLS layout, every digit."""
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    n_out = len(project.outputs)
    want = len(np.asarray(expected[project.outputs[0]])) if n_out else 0
    samples = len(lines) // n_out if n_out else 0
    if not n_out or len(lines) != want * n_out:
        return {"tb_samples": samples, "matches_csim": False,
                "tb_reason": f"{len(lines)} lines in the log, expected {want} samples x {n_out} outputs"}
    worst, equal = 0.0, True
    for s in range(samples):
        for k, name in enumerate(project.outputs):
            got = np.asarray([float(v) for v in lines[s * n_out + k]])
            y = np.asarray(expected[name], dtype=np.float64)[s]
            if project.output_channels_last.get(name) and y.ndim == 3:
                y = y.transpose(1, 2, 0)
            y = y.ravel()
            if got.size != y.size:
                return {"tb_samples": samples, "matches_csim": False,
                        "tb_reason": f"output {name!r}: {got.size} values in the log, expected {y.size}"}
            if y.size:
                worst = max(worst, float(np.max(np.abs(got - y))))
                equal = equal and bool(np.array_equal(got, y))
    return {"tb_samples": samples, "tb_max_abs_diff": worst, "matches_csim": samples > 0 and equal}
