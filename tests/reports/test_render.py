"""Reports written from real parity and latency numbers: the three files, the JSON contract, the HTML figures."""

import base64
import json

import numpy as np
import pytest

from lkca_deploy.measure.cost import EngineCost
from lkca_deploy.measure.e2e import EndToEnd
from lkca_deploy.measure.latency import stats_from_samples
from lkca_deploy.reports.contract import (
    COST_KEYS,
    E2E_STAGES,
    ENGINE_KEYS,
    LATENCY_KEYS,
    PARITY_KEYS,
    TOP_LEVEL_KEYS,
    EngineResult,
    Report,
)
from lkca_deploy.reports.render import render_markdown, summary_table, validate_report_dict, write_report
from lkca_runtime.errors import UserError
from lkca_runtime.metrics import (
    classification_parity,
    first_divergent_block,
    segmentation_parity,
    with_verdict,
)


def _latency(rng, base_ms):
    return {str(b): stats_from_samples(base_ms * b**0.5 * (1 + rng.random(60)), batch=b) for b in (1, 32)}


def _classification_report() -> Report:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(64, 10)).astype(np.float32)
    labels = reference.argmax(1)
    labels[:5] = (labels[:5] + 1) % 10
    blocks_ref = {f"block{i}": rng.normal(size=(4, 8, 16)) for i in range(3)}
    engines = []
    for precision, noise, base in (("fp32", 0.0, 3.0), ("fp16", 1e-3, 2.0), ("int8", 0.8, 1.5)):
        logits = reference + rng.normal(scale=noise, size=reference.shape).astype(np.float32)
        parity = with_verdict(classification_parity(logits, reference, labels), precision, "classification")
        blocks_eng = {
            k: v + rng.normal(scale=noise * (i + 1), size=v.shape)
            for i, (k, v) in enumerate(blocks_ref.items())
        }
        per_block, first = first_divergent_block(blocks_eng, blocks_ref)
        engines.append(
            EngineResult(
                "onnxruntime",
                precision,
                "matmul",
                path=f"/tmp/m_{precision}.onnx",
                size_bytes=3_000_000,
                parity=parity,
                latency=_latency(rng, base),
                blocks=per_block,
                first_divergent=first,
                extra={"threads": 2},
            )
        )
    engines.append(
        EngineResult.skipped("tensorrt", "fp16", "conv", "tensorrt is not installed (pip install tensorrt)")
    )
    return Report.on_this_machine(
        "lkca_vit_nano", "classification", engines, dataset="digits val (64 images)"
    )


def test_write_report_writes_three_files_and_nothing_else(tmp_path):
    out = tmp_path / "deep" / "report"
    paths = write_report(_classification_report(), out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert set(paths) == {"report.json", "report.md", "report.html"}
    # rewriting in place leaves no temp files either
    write_report(_classification_report(), out)
    assert len(list(out.iterdir())) == 3


def test_report_json_meets_contract(tmp_path):
    write_report(_classification_report(), tmp_path)
    d = json.loads((tmp_path / "report.json").read_text())
    assert validate_report_dict(d) == []
    for key in TOP_LEVEL_KEYS:
        assert key in d
    assert d["passed"] is False  # the int8 engine with noise 0.8 misses its drop threshold
    assert "summary" in d["machine"] and d["versions"]["numpy"]
    ran = [e for e in d["engines"] if e["status"] != "skipped"]
    assert [e["status"] for e in ran] == ["ok", "ok", "failed"]
    for engine in d["engines"]:
        for key in ENGINE_KEYS:
            assert key in engine
    for engine in ran:
        for key in PARITY_KEYS["classification"]:
            assert key in engine["parity"]
        for batch in ("1", "32"):
            for key in LATENCY_KEYS:
                assert key in engine["latency"][batch]
            assert "samples_ms" not in engine["latency"][batch]  # raw samples stay out of the JSON
    int8 = ran[2]
    assert int8["parity"]["failures"] and int8["parity"]["failures"][0].startswith("top1_drop")
    skipped = d["engines"][3]
    assert skipped["status"] == "skipped" and "not installed" in skipped["reason"]
    assert skipped["parity"] is None and skipped["latency"] == {}


def test_validate_report_dict_names_each_problem():
    d = _classification_report().to_dict()
    del d["versions"]
    del d["engines"][0]["parity"]["top1_drop"]
    del d["engines"][1]["latency"]["32"]["p99_ms"]
    d["engines"][3]["reason"] = ""
    d["engines"][2]["status"] = "weird"
    problems = validate_report_dict(d)
    assert "report lacks 'versions'" in problems
    assert any("engines[0]" in p and "'top1_drop'" in p for p in problems)
    assert any("engines[1]" in p and "latency['32'] lacks 'p99_ms'" in p for p in problems)
    assert any("engines[3]" in p and "skipped without a reason" in p for p in problems)
    assert any("engines[2]" in p and "'weird'" in p for p in problems)
    assert len(problems) == 5
    assert validate_report_dict([]) == ["report is not a JSON object"]


def test_html_is_self_contained_with_figures_and_skipped_reasons(tmp_path):
    write_report(_classification_report(), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count('<img alt="') == 3  # accuracy vs latency, latency boxes, per-block error
    assert '<img alt="Accuracy against latency" src="data:image/png;base64,' in page
    png = page.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "tensorrt is not installed (pip install tensorrt)" in page
    assert "first divergent block" in page


def test_markdown_tables(tmp_path):
    report = _classification_report()
    md = render_markdown(report)
    assert "| backend | precision | lowering | size | top-1 % (drop pt) |" in md
    assert "p50 @1 ms" in md and "p50 @32 ms" in md and "img/s @32" in md
    assert "## Skipped engines" in md and "tensorrt is not installed" in md
    assert "## Failures" in md and "onnxruntime/int8/matmul: top1_drop" in md
    assert "## Per-block error" in md and "| block0 |" in md
    assert report.machine["summary"] in md
    assert md.count("| PASS |") == 2 and md.count("| FAIL |") == 1


def test_summary_table_is_fixed_width():
    text = summary_table(_classification_report())
    assert text.startswith("Verdict: FAILED")
    table = text.split("\n\n")[1].splitlines()
    assert table[0].startswith("backend") and set(table[1]) <= {"-", " "}
    starts = [line.index("matmul") for line in table[2:]]
    assert len(set(starts)) == 1  # columns line up
    assert "Skipped:" in text and "Failures:" in text


def test_segmentation_report_without_latency_or_labels_still_renders(tmp_path):
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 8, 8))
    parity = with_verdict(segmentation_parity(reference, reference, labels), "fp32", "segmentation")
    unlabelled = with_verdict(segmentation_parity(reference * 1.0001, reference), "fp16", "segmentation")
    engines = [
        EngineResult("openvino", "fp32", "conv", parity=parity, latency=_latency(rng, 5.0)),
        EngineResult("openvino", "fp16", "tiled", parity=unlabelled),
    ]
    report = Report("lkca_seg_nano", "segmentation", engines, machine={"summary": "test machine"})
    write_report(report, tmp_path)
    d = json.loads((tmp_path / "report.json").read_text())
    assert validate_report_dict(d) == []
    assert d["passed"] is True and d["engines"][1]["parity"]["miou"] is None
    assert "mIoU % (drop pt)" in (tmp_path / "report.md").read_text()


def test_all_skipped_is_not_passed_and_status_rules():
    report = Report("m", "classification", [EngineResult.skipped("tensorrt", "fp16", "conv", "no GPU")])
    assert report.passed is False
    with pytest.raises(ValueError, match="needs a reason"):
        EngineResult("tensorrt", "fp16", "conv", status="skipped")
    with pytest.raises(ValueError, match="status"):
        EngineResult("onnxruntime", "fp32", "conv", status="maybe")


def test_non_finite_numbers_become_null(tmp_path):
    parity = with_verdict(
        classification_parity(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]), np.array([1])),
        "fp32",
        "classification",
    )
    report = Report("m", "classification", [EngineResult("onnxruntime", "fp32", "conv", parity=parity)])
    write_report(report, tmp_path)  # json.dumps(allow_nan=False) would raise on a NaN
    d = json.loads((tmp_path / "report.json").read_text())
    assert d["engines"][0]["parity"]["max_abs_err"] is None
    assert d["engines"][0]["status"] == "failed"


def test_report_dir_that_is_a_file_is_a_user_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(UserError, match="is an existing file"):
        write_report(Report("m", "classification", []), target)


def _with_costs(report: Report) -> Report:
    """Load time, peak memory and end-to-end stage timings on every engine that ran."""
    rng = np.random.default_rng(1)
    for i, e in enumerate(x for x in report.engines if x.status != "skipped"):
        e.cost = EngineCost(load_ms=40.0 + i, first_result_ms=42.0 + i, peak_mb=12.5 + i, process_peak_mb=90.0,
                            library_mb=31.0, batches=(1, 32))
        e.e2e = EndToEnd(images=16, stages={s: stats_from_samples(0.1 * (k + 1) * (1 + rng.random(40)), batch=1)
                                            for k, s in enumerate(E2E_STAGES)})
    return report


def test_cost_and_end_to_end_latency_in_every_rendering(tmp_path):
    report = _with_costs(_classification_report())
    write_report(report, tmp_path)
    d = json.loads((tmp_path / "report.json").read_text())
    ran = [e for e in d["engines"] if e["status"] != "skipped"]
    assert all(set(COST_KEYS) <= set(e["cost"]) and list(e["e2e"]["stages"]) == list(E2E_STAGES) for e in ran)
    assert d["engines"][-1]["cost"] is None and d["engines"][-1]["e2e"] is None  # the skipped engine
    total = report.engines[0].e2e.stages["total"]
    shown = f"{total.p50_ms:.2f} / {total.p99_ms:.2f}"
    md = (tmp_path / "report.md").read_text()
    assert "## End to end through the Predictor" in md and "decode p50 / p99 ms" in md and shown in md
    text = summary_table(report)
    assert all(h in text for h in ("load ms", "peak MiB", "e2e p50/p99 ms", shown))
    assert "End to end through the Predictor" in (tmp_path / "report.html").read_text()


def test_contract_checks_cost_and_e2e_where_present():
    d = _with_costs(_classification_report()).to_dict()
    assert validate_report_dict(d) == []
    del d["engines"][0]["cost"]["peak_mb"]
    del d["engines"][1]["e2e"]["stages"]["decode"]
    problems = validate_report_dict(d)
    assert any("cost lacks 'peak_mb'" in p for p in problems), problems
    assert any("e2e lacks stage 'decode'" in p for p in problems), problems
    old = _classification_report().to_dict()  # as written before these keys existed
    for engine in old["engines"]:
        del engine["cost"], engine["e2e"]
    assert validate_report_dict(old) == []


# ------------------------------------------------------------------------------------- figures a person can read


def _two_backends_report() -> Report:
    """Seven engines: two backends, four precisions, two INT8 flavours each; three share one accuracy and p50."""
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(64, 10)).astype(np.float32)
    labels = reference.argmax(1)
    engines = []
    for backend, precision, quantizer, noise, base in (
        ("onnxruntime", "fp32", None, 0.0, 0.3), ("onnxruntime", "fp16", None, 0.0, 0.3),
        ("onnxruntime", "int8", "cpu", 0.0, 0.3), ("onnxruntime", "int8", "tensorrt", 0.3, 0.25),
        ("openvino", "fp32", None, 0.0, 3.0), ("openvino", "int8", "nncf", 0.5, 2.0),
        ("openvino", "int8", "qdq", 0.2, 0.6),
    ):
        logits = reference + rng.normal(scale=noise, size=reference.shape).astype(np.float32)
        parity = with_verdict(classification_parity(logits, reference, labels), precision, "classification")
        latency = {"1": stats_from_samples(np.r_[base * (1 + 0.1 * rng.random(60)), 20.0], batch=1)}  # one outlier
        engines.append(EngineResult(backend, precision, "matmul", parity=parity, latency=latency,
                                    extra={"quantizer": quantizer}))
    return Report.on_this_machine("lkca_vit_nano", "classification", engines)


def test_accuracy_against_latency_names_every_engine_in_a_legend_not_on_the_points():
    from lkca_deploy.reports.figures import COLOURS, MARKERS, accuracy_latency, legend_label

    report = _two_backends_report()
    fig = accuracy_latency(report, "1", "top1", "top-1 %", report.engines[0].parity["top1_reference"])
    (ax,) = fig.axes
    assert len(ax.texts) == 0  # no labels printed beside points, where they overlapped
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    names = [legend_label(e) + (" - FAILED" if e.status == "failed" else "") for e in report.engines]
    assert legend[:-1] == names and len(set(names)) == 7  # both INT8 flavours of a backend told apart
    assert "onnxruntime int8 (tensorrt), matmul - FAILED" in legend  # its noise costs more than 1 point
    assert legend[-1].startswith("pytorch fp32")  # the reference line is kept
    assert ax.get_xscale() == "log"
    points = [c for c in ax.collections if not c.get_label().startswith("_")]  # not the x over a failed one
    assert len(points) == 7
    # markers by backend, colours by precision and flavour: no two engines share both
    styles = {(MARKERS[e.backend], COLOURS[f"{e.precision} ({e.extra['quantizer']})" if e.extra["quantizer"]
                                          else e.precision]) for e in report.engines}
    assert len(styles) == 7
    # the three onnxruntime engines at the same point are drawn as nested rings, not on top of each other
    sizes = [p.get_sizes()[0] for p in points[:3]]
    assert sizes[0] > sizes[1] > sizes[2]


def test_latency_distributions_are_on_a_log_axis_one_labelled_box_per_engine():
    from lkca_deploy.reports.figures import latency_distributions, legend_label

    report = _two_backends_report()
    fig = latency_distributions(report, ["1"])
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"  # the 20 ms outlier cannot flatten the 0.3 ms boxes
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == [legend_label(e) for e in report.engines][::-1]  # horizontal: names read left to right
    low, high = ax.get_xlim()
    assert low < 0.3 and high > 20


def _comparison(report: Report, worse_engine: int) -> dict:
    from lkca_deploy.compare import compare

    base = report.to_dict()
    new = json.loads(json.dumps(base))
    parity = new["engines"][worse_engine]["parity"]
    parity["top1"] -= 0.05
    parity["top1_drop"] += 5.0
    return compare(base, new, base_label="main", new_label="this run").to_dict()


def test_a_report_with_a_comparison_shows_it_everywhere(tmp_path):
    report = _two_backends_report()
    report.comparison = _comparison(report, worse_engine=5)
    write_report(report, tmp_path)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert validate_report_dict(doc) == [] and doc["comparison"]["regressed"] is True
    page = (tmp_path / "report.html").read_text()
    section = page.split('<h2 id="baseline">Against the baseline</h2>', 1)[1]
    assert '<span class="fail">REGRESSED</span>' in section
    assert "Regression: openvino/int8-nncf/matmul: top-1 " in section
    assert section.count("<table>") == 2  # accuracy; speed and cost
    # the regressed engine's verdict and its worse top-1 are red in the table, the other engines' cells are not
    assert section.count('<td class="fail">REGRESSED</td>') == 1
    red = [c.split("</td>")[0] for c in section.split("<td") if c.startswith(' class="fail">')]
    assert red == [' class="fail">59.06 (-5.00 pt) !', ' class="fail">40.94 (+5.00 pt) !', ' class="fail">REGRESSED']
    assert '<img alt="Change against the baseline" src="data:image/png;base64,' in section
    md = (tmp_path / "report.md").read_text()
    assert "## Against the baseline" in md and ":x: **Regressed** against `main`" in md
    assert "Against the baseline:\n" in summary_table(report)


def test_change_against_the_baseline_figure_marks_the_regression():
    from matplotlib.colors import to_hex

    from lkca_deploy.reports.figures import FAIL_COLOUR, baseline_changes

    report = _two_backends_report()
    fig = baseline_changes(_comparison(report, worse_engine=5))
    accuracy_ax = fig.axes[0]
    assert [t.get_text() for t in accuracy_ax.get_yticklabels()][::-1][5] == "openvino/int8-nncf/matmul"
    bars = accuracy_ax.patches[::-1]
    assert [to_hex(b.get_facecolor()) == FAIL_COLOUR for b in bars] == [i == 5 for i in range(7)]
    assert bars[5].get_width() == pytest.approx(-5.0)


def test_contract_checks_a_comparison_where_present():
    d = _two_backends_report().to_dict()
    d["comparison"] = {"regressed": "yes", "engines": []}
    assert validate_report_dict(d) == ["comparison is not a comparison object (regressed, engines)"]
