"""The rule API: every rule module is in the one table, and a rule written elsewhere runs through the same pass
(what it matches, why it refuses a site, how it rewrites), checked against the original conv in ONNX Runtime."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
from conv_graphs import conv_model, random_x, run_ort
from onnx import helper, numpy_helper

from lkca_deploy import forms
from lkca_deploy.forms.form import FormRule
from lkca_deploy.forms.registry import FORM_NAMES, FORMS, form_class
from lkca_deploy.lowering import rules
from lkca_deploy.lowering.apply import apply_rules
from lkca_deploy.lowering.registry import RULES, STRATEGIES, rule_class, tune_candidates
from lkca_deploy.lowering.report import NodeChange
from lkca_deploy.lowering.rule import ConvRule, Rewrite


def _defined_in(package, base) -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        names.update(obj.name for _, obj in inspect.getmembers(module, inspect.isclass)
                     if issubclass(obj, base) and obj is not base and obj.__module__ == module.__name__)
    return names


def test_every_rule_module_is_in_the_table_and_the_lists_come_from_it():
    assert _defined_in(rules, ConvRule) == set(RULES) and _defined_in(forms, FormRule) == set(FORMS)
    assert STRATEGIES == tuple(RULES) and [c.split(":")[0] for c in tune_candidates()] == list(STRATEGIES)
    assert all(rule_class(name).name == name and rule_class(name).help for name in STRATEGIES)
    assert all(form_class(name).name == name and form_class(name).help for name in FORM_NAMES)


class BiasAfter(ConvRule):
    """A rule outside the table: the conv without its bias, then an Add (depthwise only, to show a refusal)."""

    name = "bias_after"
    help = "the bias as an Add after the conv"
    depthwise_only = True

    def rewrite(self, site, names, prepared=None) -> Rewrite:
        unbiased = names.fresh(f"{site.name}/unbiased")
        conv = site.conv_like(names.fresh(f"{site.name}/conv"), list(site.node.input[:2]), [unbiased],
                              site.kernel, site.pads)
        bias = numpy_helper.from_array(site.bias.reshape(-1, 1, 1), names.fresh(f"{site.name}/bias_chw"))
        add = helper.make_node("Add", [unbiased, bias.name], list(site.node.output),
                               name=names.fresh(f"{site.name}/bias"))
        change = NodeChange(site.name, "lowered", self.name, "bias moved", site.kernel)
        return Rewrite([conv, add], [bias], change)


def test_a_rule_written_elsewhere_runs_through_the_same_pass():
    model = conv_model(grid=(6, 6))
    lowered, report = apply_rules(model, BiasAfter(), label=BiasAfter.name)
    assert [c.action for c in report.changes] == ["lowered"]
    assert sorted(n.op_type for n in lowered.graph.node) == ["Add", "Conv", "Relu"]
    x = random_x(model, 2)
    np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)

    _, refused = apply_rules(conv_model(channels=8, grid=(6, 6), cin_per_group=2), BiasAfter(), label="x")
    assert refused.changes[0].reason == "bias_after lowers depthwise convs (one input and one output channel per group)"
