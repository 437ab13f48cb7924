"""The op forms' one table: their names, the order they are applied in, and the class behind each. A new form is a
module here, its name and one line in FORMS, and its test. Classes are imported on first use, as the lowering rules'
are (lowering/registry.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lkca_runtime.errors import UserError

if TYPE_CHECKING:
    from lkca_deploy.forms.form import FormRule

GELU_ERF, LAYERNORM_DECOMPOSED, REDUCE_AXES_ATTRIBUTE = "gelu_erf", "layernorm_decomposed", "reduce_axes_attribute"

# Op forms for parsers of an older ONNX (targets.Target.graph_forms names them), in the order they are applied
FORMS = {
    GELU_ERF: "lkca_deploy.forms.gelu_erf:GeluErf",
    LAYERNORM_DECOMPOSED: "lkca_deploy.forms.layernorm_decomposed:LayerNormDecomposed",
    REDUCE_AXES_ATTRIBUTE: "lkca_deploy.forms.reduce_axes_attribute:ReduceAxesAttribute",
}
FORM_NAMES = tuple(FORMS)


def form_class(name: str) -> type[FormRule]:
    if name not in FORMS:
        raise UserError(f"unknown graph form {name!r}: choose one of {', '.join(FORM_NAMES)}")
    module, _, cls = FORMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
