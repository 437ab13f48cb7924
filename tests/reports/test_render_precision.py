"""The report says per engine what runs in float and why, and shows the accuracy-aware INT8 search."""

import numpy as np

from lkca_deploy.reports.contract import EngineResult, Report
from lkca_deploy.reports.render import render_html, render_markdown
from lkca_runtime.metrics import classification_parity, with_verdict

SEARCH = {"max_drop": 0.5, "metric": "top-1", "drop": 0.0, "met": True, "float_units": ["blocks.1.mixer"],
          "validation_samples": 925, "steps": [
              {"unit": None, "float_units": [], "drop": {"cpu": 56.0, "tensorrt": 56.32}, "kept": True},
              {"unit": "blocks.1.mixer", "float_units": ["blocks.1.mixer"], "drop": {"cpu": 0.0, "tensorrt": 0.0},
               "kept": True}]}


def _report() -> Report:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(32, 10)).astype(np.float32)
    parity = with_verdict(classification_parity(reference, reference, reference.argmax(1)), "int8", "classification")
    engines = [
        EngineResult("onnxruntime", "int8", "matmul", parity=parity,
                     extra={"quantizer": quantizer, "float_parts": {"float": ["blocks.1.mixer"], "why": "search"}})
        for quantizer in ("cpu", "tensorrt")
    ]
    engines.append(EngineResult("onnxruntime", "fp16", "matmul", parity=parity,
                                extra={"float_parts": {"float": [], "why": "every tensor fits FP16"}}))
    return Report("lkca_vit_nano", "classification", engines, extra={"int8_accuracy": SEARCH})


def test_markdown_and_html_name_the_float_units_per_engine_and_the_search():
    report = _report()
    markdown = render_markdown(report)
    assert "## What runs in float" in markdown
    assert "| onnxruntime/int8/matmul (cpu) | blocks.1.mixer | search |" in markdown
    assert "| onnxruntime/int8/matmul (tensorrt) | blocks.1.mixer | search |" in markdown
    assert "| onnxruntime/fp16/matmul | nothing | every tensor fits FP16 |" in markdown
    assert "| 1 | blocks.1.mixer | blocks.1.mixer | 0.00 | 0.00 | yes |" in markdown
    page = render_html(report)
    assert "What runs in float" in page and "Accuracy-aware INT8 search" in page and "56.32" in page


def test_no_search_table_when_every_unit_stayed_int8():
    report = _report()
    report.extra["int8_accuracy"] = {**SEARCH, "float_units": [], "steps": SEARCH["steps"][:1]}
    assert "Accuracy-aware INT8 search" not in render_markdown(report)
