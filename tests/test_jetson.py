"""Every JetPack's TensorRT, without TensorRT or a GPU: the export for each JetPack target holds only what that
TensorRT's ONNX parser takes (walked here against the parser tables), runs in ONNX Runtime as PyTorch does, and
passes `check`; the default export fails `check` for JetPack 5.1 and 6.0 with the reasons; recipes name the oldest
TensorRT that parses them and refuse an older one in one line naming the JetPack to use."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_checks import strong_checkpoint

from lkca_deploy.backends.build import build_engine
from lkca_deploy.check import check_model
from lkca_deploy.export import export_model
from lkca_deploy.models.zoo import get_config
from lkca_deploy.onnx_meta import read_metadata
from lkca_deploy.targets import TARGETS, TENSORRT_RELEASES, which_jetson_table
from lkca_runtime.bundle import read_manifest
from lkca_runtime.errors import UserError
from lkca_runtime.jetpack import JETPACK_LINES, check_recipe_fits, parse_version, recipe_refusal

REPO = Path(__file__).resolve().parent.parent
JETPACK_TARGETS = ("jetson-jp5", "jetson-jp6.0", "jetson-jp6", "jetson-jp7")
MODELS = ("lkca_vit_tiny", "lkca_seg_nano")
# Reduce ops that read `axes` as an attribute up to opset 17 (ReduceSum moved at 13 and TensorRT 8 reads its input)
REDUCE_AXES_ATTRIBUTE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


# ---------------------------------------------------------------- the tables


def test_readme_which_jetson_table_is_the_targets_table():
    assert which_jetson_table() in (REPO / "README.md").read_text()


def test_docs_name_every_jetpack_line_with_its_tensorrt():
    docs = (REPO / "docs" / "jetson.md").read_text()
    for line in JETPACK_LINES:
        row = next((r for r in docs.splitlines() if r.startswith(f"| {line.label}")), None)
        assert row is not None and line.tensorrt in row and f"`{line.target}`" in row, line


def test_a_recipe_for_a_newer_tensorrt_is_refused_in_one_line_naming_the_jetpack():
    recipe = {"precision": "fp16", "onnx": "tensorrt/fp16/model.fp16.onnx", "min_tensorrt": "10.3.0"}
    why = recipe_refusal(recipe, "8.5.2.2")
    assert "\n" not in why and "TensorRT 10.3.0" in why and "JetPack 5.1" in why
    assert "flash JetPack 6.1 or later" in why and "--target jetson-jp5" in why
    assert recipe_refusal(recipe, "10.3.0.30") is None and recipe_refusal(recipe, "11.4.1") is None
    assert recipe_refusal({**recipe, "min_tensorrt": "8.5.2"}, "8.5.2.2") is None
    with pytest.raises(UserError, match="JetPack 6.0.*flash JetPack 6.1.*--target jetson-jp6.0"):
        check_recipe_fits(recipe, "8.6.2.3")
    check_recipe_fits({"precision": "fp32"}, "8.5.2")  # written before the stamp: not judged


# ---------------------------------------------------------------- exports per JetPack, walked and run


def _walk(model: onnx.ModelProto, target: str) -> list[str]:
    """What a TensorRT of `target` would not parse as ONNX means it, found independently of check.py."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {t.name: t for t in model.graph.initializer}
    problems = []
    for name in TARGETS[target].tensorrt:
        release = TENSORRT_RELEASES[name]
        if not release.opsets[0] <= opset <= release.opsets[1]:
            problems.append(f"opset {opset} on {release.label}")
        for node in model.graph.node:
            if node.op_type not in release.ops:
                problems.append(f"{node.op_type} on {release.label}")
            if not release.reduce_axes_input and node.op_type in REDUCE_AXES_ATTRIBUTE and node.input[1:2] != [] \
                    and node.input[1]:
                problems.append(f"{node.op_type} axes input on {release.label}")
            source = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
            if not release.int8_weight_initializers and source is not None \
                    and source.data_type == onnx.TensorProto.INT8:
                problems.append(f"DequantizeLinear of an INT8 initializer on {release.label}")
    return problems


def _ort(path_or_model, x: np.ndarray) -> np.ndarray:
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module", params=MODELS)
def exports(request, tmp_path_factory):
    """One model's export for target tensorrt (what the toolkit wrote for TensorRT before the JetPack targets) and
    for each JetPack target, with the FP16 and INT8 recipes build_engine writes (TensorRT absent: the baked ONNX and
    the device files are written all the same). jetson-jp7's graph is jetson-jp6's (both TensorRT 10+, opset 20,
    no rewrites; the test asserts it), so they share their recipes, and tensorrt's INT8 is jetson-jp6's too."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    ckpt, model = strong_checkpoint(folder, name, None)
    config = get_config(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, config.in_chans, config.img_size, config.img_size)).astype(np.float32)
    calib = rng.standard_normal((8, config.in_chans, config.img_size, config.img_size)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    out = {"x": x, "reference": reference, "folder": folder}
    for target in ("tensorrt", *JETPACK_TARGETS):
        out[target] = {"fp32": export_model(ckpt, folder / f"{target}.onnx", target=target, check_samples=2).path}
    for target in ("jetson-jp5", "jetson-jp6.0", "jetson-jp6"):
        for precision in ("fp16", "int8"):
            engine = folder / target / precision / f"model.{precision}.engine"
            engine.parent.mkdir(parents=True)
            result = build_engine(out[target]["fp32"], "tensorrt", precision, engine,
                                  calib=calib if precision == "int8" else None)
            out[target][precision] = next(f for f in result.files if f.name == f"model.{precision}.{precision}.onnx")
    assert _nodes(out["jetson-jp7"]["fp32"]) == _nodes(out["jetson-jp6"]["fp32"]) == _nodes(out["tensorrt"]["fp32"])
    out["jetson-jp7"].update(fp16=out["jetson-jp6"]["fp16"], int8=out["jetson-jp6"]["int8"])
    out["tensorrt"]["int8"] = out["jetson-jp6"]["int8"]
    return out


def _nodes(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    return [(n.op_type, tuple(n.input)) for n in onnx.load(str(path)).graph.node]


def test_the_default_export_fails_check_for_jetpack_5_and_6_0_naming_what_and_which_tensorrt(exports):
    default = onnx.load(str(exports["tensorrt"]["fp32"]))
    for target, release, missing in (("jetson-jp5", "8.5.2", ("Gelu", "LayerNormalization")),
                                     ("jetson-jp6.0", "8.6.2", ("Gelu",))):
        report = check_model(default, target)
        assert not report.ok
        text = report.format_text()
        for op in (*missing, "opset"):
            assert any(f.op == op and f"TensorRT {release}" in f.problem for f in report.errors), (target, op, text)
        reduce = [f for f in report.errors if f.op == "ReduceMean"]
        assert all("axes input" in f.problem for f in reduce)
    int8 = onnx.load(str(exports["tensorrt"]["int8"]))
    assert any("INT8 initializer" in f.problem and "TensorRT 8.5.2" in f.problem
               for f in check_model(int8, "jetson-jp5").errors)
    for target in ("jetson-jp6", "jetson-jp7", "tensorrt"):
        assert check_model(default, target).ok, target


@pytest.mark.parametrize("target", JETPACK_TARGETS)
def test_each_jetpack_export_holds_only_what_its_tensorrt_parses_and_runs_exactly(exports, target):
    x, reference = exports["x"], exports["reference"]
    fp32 = exports[target]["fp32"]
    for precision, path in exports[target].items():
        model = onnx.load(str(path))
        assert _walk(model, target) == [], (precision, _walk(model, target)[:5])
        assert check_model(model, target).ok, check_model(model, target).format_text()
    assert float(read_metadata(fp32)["self_check_max_abs_error"]) < 1e-4
    assert np.abs(_ort(fp32, x) - reference).max() < 1e-4
    for precision, tolerance in (("fp16", 0.05), ("int8", 0.3)):
        out = _ort(exports[target][precision], x)
        assert np.linalg.norm(out - reference) / np.linalg.norm(reference) < tolerance, precision
    stamp = read_metadata(exports[target]["fp16"])["tensorrt_compatibility"]
    oldest = TENSORRT_RELEASES[TARGETS[target].tensorrt[0]].version  # it parses there, maybe on older ones too
    assert parse_version(stamp["min_tensorrt"]) <= parse_version(oldest)
    assert {line.label for line in JETPACK_LINES if line.target == target} <= set(stamp["jetpacks"])


def test_tensorrt_8_recipes_keep_the_decomposed_layernorm_fp32_and_hold_float_weights(exports):
    fp16 = onnx.load(str(exports["jetson-jp5"]["fp16"]))
    kept = read_metadata(fp16).get("fp16_fp32_nodes") or []
    assert kept and all("layernorm_decomposed" in n for n in kept)
    # every kept node reads float32: a float initializer, another kept node, or a Cast to float32
    floats = {t.name for t in fp16.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    produced = {o: n for n in fp16.graph.node for o in n.output}
    to_float = {n.output[0] for n in fp16.graph.node if n.op_type == "Cast"
                and onnx.helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT}
    for node in (n for n in fp16.graph.node if n.name in kept):
        for name in (i for i in node.input if i):
            assert name in floats or name in to_float or produced[name].name in kept \
                or produced[name].op_type == "Constant", (node.name, name)
    script = Path(f"{exports['jetson-jp5']['fp16']}.trtexec.sh").read_text()
    line8 = next(line for line in script.splitlines() if "--fp16" in line and "--stronglyTyped" not in line)
    assert "--precisionConstraints=obey" in line8 and f"{kept[0]}:fp32" in line8
    int8 = onnx.load(str(exports["jetson-jp6.0"]["int8"]))
    weights = {t.name: t for t in int8.graph.initializer}
    readers = [n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in weights]
    assert readers and all(weights[n.input[0]].data_type == onnx.TensorProto.FLOAT for n in readers)
    header = (exports["folder"] / "jetson-jp5" / "int8" / "model.int8.calib.cache").read_text().splitlines()[0]
    assert header == "TRT-8502-EntropyCalibration2"


def test_the_script_refuses_an_older_tensorrt_in_one_line_naming_the_jetpack(exports, tmp_path):
    script = Path(f"{exports['jetson-jp6']['fp16']}.trtexec.sh")
    env = {**os.environ, "TRT_VERSION": "8.6.2.3", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs TensorRT 10.3.0 or later" in lines[0] and "8.6.2.3" in lines[0]
    assert "flash JetPack 6.1 or later" in lines[0]


def test_pipeline_for_jetpack_5_writes_its_recipes_and_the_compatibility_table(small_bundle):
    """small_bundle is `pipeline --target jetson-jp5` on the embedded default (digits, lkca_vit_nano)."""
    bundle, report = small_bundle
    assert report.passed
    manifest = read_manifest(bundle)
    rows = manifest.extra["compatibility"]
    assert {r["recipe"] for r in rows} == {"fp32", "fp16", "int8-tensorrt"}
    readme = (bundle / "README.md").read_text()
    assert manifest.artifact("README.md") is not None
    for row in rows:
        assert row["min_tensorrt"] == "8.5.2" and row["jetpacks"][0] == "5.1", row
        model = onnx.load(str(bundle / row["onnx"]))
        assert _walk(model, "jetson-jp5") == [] and check_model(model, "jetson-jp5").ok, row["onnx"]
        assert re.search(rf"\| {row['recipe']} \| `{re.escape(row['onnx'])}` \| 8\.5\.2 \| 5\.1, 6\.0, ", readme)
