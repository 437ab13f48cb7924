"""What cannot be judged is not passed: `compare` fails (exit 1) a new report with NaN or infinite figures, one
that lost engines or has none, one whose engine has no parity figures, and refuses (exit 2, one line) a string
where a number belongs; JSON nested beyond any report's depth is one line wherever a user's JSON is read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hostile_common import assert_one_line, cli, mean_classifier_bundle, untrained_checkpoint

from lkca_runtime.errors import UserError


@pytest.fixture(scope="module")
def base_report(tmp_path_factory) -> dict:
    """A real report: parity of two engines' logits against a reference, as the pipeline measures it."""
    from lkca_deploy.measure.latency import LatencyStats
    from lkca_deploy.reports.contract import EngineResult, Report
    from lkca_deploy.reports.render import write_report
    from lkca_runtime.metrics import classification_parity, with_verdict

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 3)).astype(np.float32)
    labels = ref.argmax(1)
    engines = []
    for precision, noise in (("fp32", 0.0), ("fp16", 1e-3)):
        logits = ref + rng.normal(scale=noise, size=ref.shape).astype(np.float32)
        parity = with_verdict(classification_parity(logits, ref, labels), precision, "classification")
        engines.append(EngineResult("onnxruntime", precision, "conv", size_bytes=1000, parity=parity,
                                    latency={1: LatencyStats(1.0, 1.1, 1.2, 1.0, 0.1, 0.1, 0.9, 1.3, 10, 1, 1000.0)}))
    folder = tmp_path_factory.mktemp("report")
    write_report(Report.on_this_machine("mean", "classification", engines), folder)
    return json.loads((folder / "report.json").read_text())


def _regressions(base: dict, new: dict) -> list[str]:
    from lkca_deploy.compare import compare

    result = compare(base, new)
    json.dumps(result.to_dict(), allow_nan=False)  # whatever was read, the comparison is valid JSON
    return result.regressions


def test_the_same_report_passes(base_report):
    assert _regressions(base_report, copy.deepcopy(base_report)) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_figures_fail(base_report, value):
    new = copy.deepcopy(base_report)
    new["engines"][0]["parity"]["top1"] = value
    new["engines"][1]["latency"]["1"]["p50_ms"] = value
    lines = _regressions(base_report, new)
    assert any("onnxruntime/fp32/conv: top-1 is NaN or infinite in the new report" in line for line in lines)
    assert any("onnxruntime/fp16/conv: p50 @1 is NaN or infinite" in line for line in lines)
    lines = _regressions(new, base_report)  # a baseline that cannot be judged cannot vouch either
    assert any("in the base report" in line for line in lines)


def test_a_new_report_that_lost_engines_or_has_none_fails(base_report):
    new = copy.deepcopy(base_report)
    new["engines"].pop(1)
    assert _regressions(base_report, new) == ["onnxruntime/fp16/conv: ran in the baseline, not in the new report"]
    new["engines"] = []
    assert len(_regressions(base_report, new)) == 2
    with pytest.raises(UserError, match="nothing to compare"):
        _regressions(new, new)


def test_an_engine_without_parity_fails(base_report):
    new = copy.deepcopy(base_report)
    new["engines"][0]["parity"] = None
    new["engines"][0]["status"] = "failed"
    assert any("no parity figures" in line for line in _regressions(base_report, new))


def test_compare_on_the_command_line(base_report, tmp_path):
    """Exit 1 for what cannot be judged; a string where a number belongs, or JSON nested 100000 deep, exit 2."""
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(base_report))
    doc = copy.deepcopy(base_report)
    for engine in doc["engines"]:
        engine["parity"]["top1"] = float("nan")
    new.write_text(json.dumps(doc))
    outcome = cli("compare", base, new, "--json")
    assert outcome.code == 1, outcome.err
    assert json.loads(outcome.out)["regressed"] is True  # parsed as strict JSON: no bare NaN printed
    doc["engines"][0]["parity"]["top1"] = "0.9"
    new.write_text(json.dumps(doc))
    assert_one_line(cli("compare", base, new), "'top1'", "not a number")
    new.write_text("[" * 100000 + "]" * 100000)
    assert_one_line(cli("compare", base, new), str(new), "nested deeper")


def test_deep_json_is_one_line_in_manifests_sidecars_and_configs(tmp_path):
    from lkca_deploy.checkpoint import read_checkpoint
    from lkca_runtime.backends.base import read_sidecar
    from lkca_runtime.bundle import read_manifest

    deep = '{"a":' * 100000 + "1" + "}" * 100000
    bundle = mean_classifier_bundle(tmp_path / "B", tmp_path)
    (bundle / "onnx" / "model.fp32.onnx.json").write_text(deep)
    with pytest.raises(UserError, match="not valid JSON"):
        read_sidecar(bundle / "onnx" / "model.fp32.onnx", "onnxruntime")
    (bundle / "manifest.json").write_text('{"format": "lkca-deploy-bundle/1", "x": ' + deep + "}")
    with pytest.raises(UserError, match="nested deeper"):
        read_manifest(bundle)
    ckpt = untrained_checkpoint(tmp_path / "ckpt")
    (ckpt / "config.json").write_text(deep)
    with pytest.raises(UserError, match="nested deeper"):
        read_checkpoint(ckpt)
    assert_one_line(cli("predict", bundle, Path(__file__)), "manifest.json", "nested deeper")
