"""torch -> ONNX: export the conv view, fold its weights to constants, simplify, lower, self-check, write atomically.

Steps of `export_model`, each one place:
1. the source: a checkpoint directory or a zoo name (seeded random weights), always in the conv view: the
   attention view is the `matmul` lowering of the same graph, and the FFT view is never exported;
2. trace with the dynamo exporter (torch.export + onnxscript), then fold constants so every LKCA conv weight,
   built in torch by repeat_interleave from the (heads, 1, K, K) kernel, is one initializer the lowering passes
   can read; then onnx-simplifier (optional; a failure only warns);
3. lower (lowering/: apply.lower_model, planner.lower_auto or tune.tune_model: one implementation per rewrite);
4. self-check the result in ONNX Runtime against PyTorch FP32 on real samples where there are any;
5. metadata (name, task, preprocessing, class names, lowering per layer and why, versions, self-check error),
   checker + shape inference, atomic write. Anything that fails before the write leaves nothing at `out`.

Segmentation logits (`logits`): "input" (the default) keeps the model's own output, upsampled to the input size
inside the graph; "grid" ends the graph at the head's grid logits (lkca_seg_tiny: 150 x 32 x 32 instead of
150 x 512 x 512) and leaves the one bilinear upsample to the image's own size to the Predictor, parity and the
sliding windows (masks.py), which do it anyway; "HxW" ends it at a size the user names.

The dynamo exporter was chosen over the TorchScript one (still present, deprecated): after simplification its
graph is leaner (78 vs 112 nodes for lkca_vit_nano; no Reshape/Gemm/Reshape detours around the Linear layers).
It is slower to trace (seconds), so the traced, simplified graph is memoised per process, keyed by the weights'
content and the export options: exporting one model with several lowerings traces it once.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lkca_deploy import __version__
from lkca_deploy.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from lkca_deploy.data import load_arrays
from lkca_deploy.data.datasets import DIGITS_MEAN_STD, IMAGENET_MEAN_STD
from lkca_deploy.forms.apply import apply_forms, fp32_nodes
from lkca_deploy.forms.registry import LAYERNORM_DECOMPOSED
from lkca_deploy.forms.upsample import upsample_as_matmuls
from lkca_deploy.lowering.apply import lower_model
from lkca_deploy.lowering.registry import STRATEGIES, TILED
from lkca_deploy.lowering.report import LoweringReport
from lkca_deploy.lowering.rules.matmul import DEFAULT_MATMUL_BUDGET
from lkca_deploy.models.zoo import create_model, get_config, list_models
from lkca_deploy.onnx_graph import opset_of
from lkca_deploy.onnx_meta import read_metadata, set_metadata
from lkca_deploy.planning.planner import lower_auto
from lkca_deploy.planning.tune import TuneRow, tune_model
from lkca_deploy.targets import DEFAULT_TARGET, get_target
from lkca_runtime.backends.base import PRECISIONS, run_batched
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import save_onnx_atomic
from lkca_runtime.spec import PreprocessSpec

LOWERINGS = (*STRATEGIES, "auto", "tune")
TUNE_BACKENDS = ("onnxruntime", "openvino")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BATCH_DIM = "batch"
LOGITS_INPUT, LOGITS_GRID = "input", "grid"
DEFAULT_LOGITS = LOGITS_INPUT  # what the PyTorch model returns; the pipeline's bundles choose "grid"
MIN_OPSET = 17  # LayerNormalization is one op from opset 17 on (TensorRT keeps it FP32 only as one op)
# torch's dynamo exporter writes opset 18 at least; a lower opset is reached after folding (forms/opsets.py),
# once the Reduce axes are constants that the converter can read.
TRACE_MIN_OPSET = 18
# 20: GELU is one op, which ONNX Runtime fuses with its bias (BiasGelu); the split Erf form it does not fuse.
# TensorRT 10 parses opsets 9-20 (Gelu included); OpenVINO and ONNX Runtime read it.
DEFAULT_OPSET = 20
CHECK_CHUNK = 16  # samples per self-check run: bounds memory for the 512 px segmentation models
_TRACE_CACHE_SIZE = 4
# Elements: fold every constant subgraph however large (onnxscript's default input limit of 8192 would leave
# the LKCA conv weights as Reshape(constant), which the lowering passes cannot read).
_FOLD_LIMIT = 2**31

# metadata_props keys; values are strings, JSON where structured (read them back with read_metadata)
META_KEYS = (
    "model_name",
    "task",
    "preprocessing",
    "class_names",
    "lowering",
    "target",
    "toolkit_version",
    "opset",
    "batch",
    "block_outputs",
    "check_inputs",
    "check_samples",
    "self_check_max_abs_error",
    "logits",
)


class SelfCheckError(RuntimeError):
    """The exported ONNX does not compute what the PyTorch model computes: a bug, never a file to ship."""


@dataclass
class ExportResult:
    path: Path
    lowering: LoweringReport | None
    plans: list  # planner.Plan per grouped conv for `auto`, else empty
    max_abs_err: float
    metadata: dict  # the metadata_props, JSON values parsed
    tune_table: list | None  # tune.TuneRow per candidate for `tune`, else None


@dataclass
class _Source:
    """A model to export and what describes it."""

    model: Any  # the torch ViT in eval mode, conv view
    config: Any  # models.zoo.ModelConfig
    spec: Any  # data.spec.PreprocessSpec
    data: str | None  # the data set its real samples come from, if any
    key: tuple  # identifies the weights for the trace memo


# ---------------------------------------------------------------- public API


def export_model(
    source: str | Path,
    out: Path,
    *,
    lowering: str = "auto",
    target: str = DEFAULT_TARGET,
    max_kernel: int | None = None,
    batch: int | None = None,
    opset: int | None = None,
    simplify: bool = True,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    seed: int = 0,
    check_data: str | None = None,
    check_samples: int = 64,
    tolerance: float = 1e-4,
    block_outputs: bool = False,
    tune_backend: str = "onnxruntime",
    precision: str | None = None,
    logits: str | None = None,
    upsample_matmuls: bool | None = None,
) -> ExportResult:
    """Export `source` (checkpoint directory or zoo name) to a lowered, self-checked ONNX at `out`.

    lowering: conv | crop | matmul | tiled (tiles of at most `max_kernel`) | auto (planner table for `target`)
    | tune (time the candidates on `tune_backend` here, keep the fastest exact one). batch: None for a dynamic
    batch axis, N for a static one. block_outputs: add every transformer block's tokens as outputs
    block_0..block_{depth-1} (parity localisation). precision: what the engines built from this ONNX compute in,
    when known (auto plans for it: INT8 on tensorrt gets a MatMul mixer); None plans for any precision.
    logits (segmentation): "input" (default), "grid" or "HxW", see the module docstring. upsample_matmuls: the
    head's bilinear Resize as two MatMuls (forms/upsample.py); None: where the target runs that faster (the CPU
    targets). opset: None for DEFAULT_OPSET. Raises UserError for bad arguments and a matmul over
    `budget_bytes`, SelfCheckError when ONNX Runtime and PyTorch differ by more than `tolerance`; in both cases
    nothing is written at `out`.
    """
    opset = opset or DEFAULT_OPSET
    _check_arguments(lowering, target, max_kernel, batch, opset, check_samples, tune_backend, precision)
    caps = get_target(target)
    file_opset = min(opset, caps.opsets[1]) if caps.opsets[1] is not None else opset  # what the target reads
    src = load_source(source, seed)
    size = logits_size(src.model, src.config.task, logits)
    base = traced_onnx(src, batch=batch, opset=max(opset, TRACE_MIN_OPSET), simplify=simplify,
                       block_outputs=block_outputs, logits_size=size)
    # The target's op forms and the file's opset before lowering: the rules then write nodes of that opset, which
    # onnx's converter could not always bring down afterwards (no Split or Pad adapter from 18 to 17, onnx 1.23).
    base, forms = apply_forms(base, caps.graph_forms, file_opset)
    model, report, plans, tune_table = apply_lowering(
        base,
        lowering,
        target=target,
        max_kernel=max_kernel,
        budget_bytes=budget_bytes,
        tune_backend=tune_backend,
        batch=batch,
        seed=seed,
        precision=precision,
    )
    upsampled = []
    if caps.upsample_matmuls if upsample_matmuls is None else upsample_matmuls:
        model, upsampled = upsample_as_matmuls(model)
    x, check_inputs = check_inputs_for(src, check_data, check_samples, seed)
    max_abs_err = self_check(model, logits_module(src.model, size), x, batch=batch, tolerance=tolerance)
    lowering_facts = {
        "requested": lowering,
        "precision": precision,
        "summary": report.summary(),
        "report": report.to_dict(),
        "plans": [plan.to_dict() for plan in plans],
        "tune": [row.to_dict() for row in tune_table] if tune_table is not None else None,
        "upsample_matmuls": upsampled,  # Resize nodes written as two MatMuls
        "graph_forms": {**forms.to_dict(), "fp32_nodes": fp32_nodes(model)},
    }
    metadata = _metadata(
        src,
        lowering_facts,
        target=target,
        opset=opset_of(model),  # the file's own, whatever was asked
        batch=batch,
        block_outputs=block_outputs,
        check_inputs=check_inputs,
        samples=len(x),
        max_abs_err=max_abs_err,
        logits=_logits_label(src.config.task, logits, size),
    )
    _set_metadata(model, metadata)
    metadata = read_metadata(model)  # what a reader of the file gets: JSON types (lists, not tuples)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    save_onnx_atomic(model, Path(out))
    return ExportResult(Path(out), report, plans, max_abs_err, metadata, tune_table)


def default_spec(config) -> Any:
    """The preprocessing a zoo model without a checkpoint gets: digits' for 1 channel, ImageNet's for 3."""
    mean, std = DIGITS_MEAN_STD if config.in_chans == 1 else IMAGENET_MEAN_STD
    return PreprocessSpec(
        input_size=(config.img_size, config.img_size),
        channels=config.in_chans,
        mean=mean,
        std=std,
        class_names=tuple(str(i) for i in range(config.num_classes)),
        task=config.task,
    )


def load_source(source: str | Path, seed: int = 0) -> _Source:
    """A checkpoint directory (its weights, spec and data set) or a zoo name (seeded weights, default spec)."""
    path = Path(source)
    if path.is_dir():

        model, ckpt = load_checkpoint(path, view="conv")
        digest = hashlib.sha256((path / CONFIG_FILE).read_bytes())
        digest.update((path / WEIGHTS_FILE).read_bytes())
        return _Source(
            model, ckpt.config, ckpt.spec, ckpt.meta.get("data"), ("checkpoint", digest.hexdigest())
        )
    if str(source) not in list_models():
        raise UserError(
            f"{source} is neither a checkpoint directory nor a zoo model; zoo models: {', '.join(list_models())}"
        )
    config = get_config(str(source))
    model = create_model(str(source), view="conv", seed=seed).eval()
    data = "digits" if config.in_chans == 1 and config.task == "classification" else None
    return _Source(model, config, default_spec(config), data, ("zoo", str(source), seed))


# ---------------------------------------------------------------- tracing


_TRACES: OrderedDict[tuple, bytes] = OrderedDict()


def traced_onnx(
    src: _Source,
    *,
    batch: int | None,
    opset: int,
    simplify: bool,
    block_outputs: bool,
    logits_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """The model as ONNX with folded constant weights (and simplified): a fresh copy of a per-process memo.

    logits_size: segmentation logits at this (H, W) (see logits_size()); None: the model's own output."""
    key = (src.key, batch, opset, simplify, block_outputs, logits_size)
    if key not in _TRACES:
        model = _trace(src, batch=batch, opset=opset, block_outputs=block_outputs, logits_size=logits_size)
        if simplify:
            model = _simplify(model)
        _TRACES[key] = model.SerializeToString()
        while len(_TRACES) > _TRACE_CACHE_SIZE:
            _TRACES.popitem(last=False)
    _TRACES.move_to_end(key)
    return onnx.load_from_string(_TRACES[key])


def _trace(
    src: _Source, *, batch: int | None, opset: int, block_outputs: bool, logits_size: tuple[int, int] | None
) -> onnx.ModelProto:
    import onnxscript.optimizer
    import torch

    module = _with_blocks(src.model, logits_size) if block_outputs else logits_module(src.model, logits_size)
    c, (h, w) = src.config.in_chans, src.spec.input_size
    # Batch 2 as the example: torch.export specialises a dimension of size 1 to a constant.
    example = torch.zeros(batch or 2, c, h, w)
    outputs = [OUTPUT_NAME] + ([f"block_{i}" for i in range(len(src.model.blocks))] if block_outputs else [])
    dynamic = None if batch else ({0: torch.export.Dim(BATCH_DIM)},)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export's notes on the tracing, not problems of the model
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=outputs,
            opset_version=opset,
            dynamic_shapes=dynamic,
            optimize=False,
            verbose=False,
        )
    model = program.model_proto
    # Fold everything constant, however big: the conv weights must be initializers for the lowering passes.
    model = onnxscript.optimizer.optimize(model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
    onnx.checker.check_model(model)
    return model


def _with_blocks(model, logits_size: tuple[int, int] | None = None):
    """`model` returning its logits plus every block's tokens (B, N, C): where two engines first diverge."""
    from torch import nn

    class WithBlocks(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x):
            blocks = self.model.forward_blocks(x)
            return (_head(self.model, blocks[-1], logits_size), *blocks)

    return WithBlocks(model)


def logits_size(model, task: str, logits: str | None) -> tuple[int, int] | None:
    """The (H, W) a segmentation export's logits end at, from the `logits` option; None: the model's own output
    (the input size). UserError for a bad value, or for the option on a classifier."""
    if logits is None or (task == "segmentation" and logits == LOGITS_INPUT):
        return None
    if task != "segmentation":
        raise UserError(f"--logits is for segmentation models; this one is a {task} model")
    named = check_logits(logits)
    return tuple(model.head.logit_grid) if named is None else named


def check_logits(logits: str) -> tuple[int, int] | None:
    """The (H, W) of an "HxW" `logits` option, None for input or grid; UserError for anything else."""
    if logits in (LOGITS_INPUT, LOGITS_GRID):
        return None
    height, _, width = str(logits).lower().partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise UserError(f"--logits must be {LOGITS_INPUT}, {LOGITS_GRID} or a size HxW like 128x128, got {logits!r}")
    return int(height), int(width)


def logits_module(model, size: tuple[int, int] | None):
    """The PyTorch model with its segmentation logits at `size` (None: `model` itself): the export's reference."""
    if size is None:
        return model
    from torch import nn

    class LogitsAt(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x):
            return _head(self.model, self.model.forward_blocks(x)[-1], size)

    return LogitsAt(model).eval()


def _head(model, tokens, size: tuple[int, int] | None):
    """The head on the last block's tokens: as the model runs it (size None), or segmentation logits at `size`."""
    return model.head(model.norm(tokens)) if size is None else model.head(model.norm(tokens), size)


def _logits_label(task: str, logits: str | None, size: tuple[int, int] | None) -> str:
    """The metadata's "logits": classes, input, grid or HxW (what the output holds)."""
    if task != "segmentation":
        return "classes"
    if size is None:
        return LOGITS_INPUT
    return LOGITS_GRID if logits == LOGITS_GRID else f"{size[0]}x{size[1]}"


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    try:
        # Shape and constant simplification only: onnxsim's optimizer rewrites every 3-D MatMul+Add as
        # Reshape->Gemm->Reshape (37 Gemms, ~72 Reshapes on lkca_vit_tiny), which stops ONNX Runtime folding
        # Transposes into FusedMatMul (measured 4.07 -> 3.92 ms at batch 1 without it, 1 thread).
        simplified, ok = onnxsim.simplify(model, perform_optimization=False)
    # onnxsim raises anything from its C++ core; the unsimplified model is still right
    except Exception as err:  # noqa: BLE001
        warnings.warn(
            f"onnx-simplifier failed ({type(err).__name__}: {err}); keeping the unsimplified model",
            stacklevel=3,
        )
        return model
    if not ok:
        warnings.warn(
            "onnx-simplifier could not validate its result; keeping the unsimplified model", stacklevel=3
        )
        return model
    return simplified


# ---------------------------------------------------------------- lowering


def apply_lowering(
    model: onnx.ModelProto,
    lowering: str,
    *,
    target: str = DEFAULT_TARGET,
    max_kernel: int | None = None,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    tune_backend: str = "onnxruntime",
    batch: int | None = None,
    seed: int = 0,
    precision: str | None = None,
) -> tuple[onnx.ModelProto, LoweringReport, list, list[TuneRow] | None]:
    """(lowered model, report, auto's plans, tune's table) for one of LOWERINGS (precision: auto's, see
    planner.choose_lowering)."""
    if lowering == "auto":
        lowered, report, plans = lower_auto(model, target, budget_bytes, precision)
        return lowered, report, plans, None
    if lowering == "tune":
        return tune_model(model, tune_backend, budget_bytes=budget_bytes, batch=batch, seed=seed)
    lowered, report = lower_model(model, lowering, max_kernel=max_kernel, budget_bytes=budget_bytes)
    return lowered, report, [], None


# ---------------------------------------------------------------- self-check


def check_inputs_for(src: _Source, check_data: str | None, samples: int, seed: int) -> tuple[np.ndarray, str]:
    """(inputs, where they came from): real test samples of the model's data where there are any, else random.

    An explicit `check_data` must load; the checkpoint's own data set may be missing on this machine (trained
    elsewhere), and then the check falls back to random inputs with a warning rather than refusing to export.
    """
    data = check_data or src.data
    if data is not None:
        try:
            x, _ = load_arrays(data, "test", src.spec, limit=samples, seed=seed)
            return x, f"{data} test split"
        except UserError as err:
            if check_data is not None:
                raise
            warnings.warn(f"self-check on random inputs: {err}", stacklevel=3)
    shape = (samples, src.config.in_chans, *src.spec.input_size)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32), "random"


def self_check(
    model: onnx.ModelProto,
    torch_model,
    x: np.ndarray,
    *,
    batch: int | None = None,
    tolerance: float = 1e-4,
) -> float:
    """Max abs difference of the logits between ONNX Runtime (CPU, full optimization) and PyTorch FP32.

    Raises SelfCheckError above `tolerance`.
    """
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    step = batch or CHECK_CHUNK
    worst = 0.0
    for start in range(0, len(x), step):  # chunk by chunk: bounds memory for the 512 px segmentation models
        chunk = np.ascontiguousarray(x[start : start + step])
        got = run_batched(lambda c: session.run([OUTPUT_NAME], {INPUT_NAME: c})[0], chunk, step=step, static=batch)
        with torch.no_grad():
            want = torch_model(torch.from_numpy(chunk)).numpy()
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    if not worst <= tolerance:  # also catches NaN
        raise SelfCheckError(
            f"SELF-CHECK FAILED: ONNX Runtime logits differ from PyTorch FP32 by {worst:.3g} (max abs), over the "
            f"tolerance {tolerance:g}; nothing was written. This is a bug in the export or a lowering pass: "
            "please report it with the model name and the lowering"
        )
    return worst


# ---------------------------------------------------------------- metadata


def _metadata(
    src: _Source,
    lowering: dict,
    *,
    target: str,
    opset: int,
    batch: int | None,
    block_outputs: bool,
    check_inputs: str,
    samples: int,
    max_abs_err: float,
    logits: str,
) -> dict:
    return {
        "model_name": src.config.name,
        "task": src.config.task,
        "preprocessing": src.spec.to_dict(),
        "class_names": list(src.spec.class_names),
        "lowering": lowering,
        "target": target,
        "toolkit_version": __version__,
        "opset": str(opset),
        "batch": str(batch) if batch else BATCH_DIM,
        "block_outputs": str(bool(block_outputs)).lower(),
        "check_inputs": check_inputs,
        "check_samples": str(samples),
        "self_check_max_abs_error": f"{max_abs_err:.3g}",
        "logits": logits,
    }


def _set_metadata(model: onnx.ModelProto, metadata: dict) -> None:
    del model.metadata_props[:]
    set_metadata(model, metadata)


# ---------------------------------------------------------------- arguments


def _check_arguments(lowering, target, max_kernel, batch, opset, check_samples, tune_backend, precision=None) -> None:
    if lowering not in LOWERINGS:
        raise UserError(f"unknown lowering {lowering!r}: choose one of {', '.join(LOWERINGS)}")
    caps = get_target(target)
    if max_kernel is not None and lowering != TILED:
        raise UserError(f"--max-kernel applies to the tiled lowering only, not {lowering}")
    if batch is not None and batch < 1:
        raise UserError(f"batch must be at least 1 (or dynamic), got {batch}")
    if opset < MIN_OPSET and LAYERNORM_DECOMPOSED not in caps.graph_forms:
        raise UserError(
            f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET} "
            f"(a target with the {LAYERNORM_DECOMPOSED} graph form writes it as older ops)"
        )
    if check_samples < 1:
        raise UserError(f"the self-check needs at least 1 sample, got {check_samples}")
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if lowering == "tune" and tune_backend not in TUNE_BACKENDS:
        raise UserError(f"unknown tune backend {tune_backend!r}: choose one of {', '.join(TUNE_BACKENDS)}")
