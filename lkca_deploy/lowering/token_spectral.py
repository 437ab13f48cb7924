"""The `token_spectral` lowering: the whole LKCA mixer, tokens in and out, as DFT and Toeplitz MatMuls.

An exported LKCA block reaches its depthwise conv through a layout change and comes back the same way:

    tokens (B, H*W, C) -Transpose-> (B, C, H*W) -Reshape-> (B, C, H, W) -Conv-> (B, C, Ho, Wo)
                       -Reshape-> (B, C, Ho*Wo) -Transpose-> tokens (B, Ho*Wo, C)

This pass replaces those five nodes. The tokens are already a (B, H, W, C) grid by a reshape, and a MatMul with a
constant on its left contracts the data's second-to-last axis, so each transform is applied where its axis lies.
Two forms, both exact for the same reason as the `spectral` lowering (lowering/spectral.py): the circulant period
along a transformed axis is grid + output - 1, so the circular convolution has no wrap-around.

The Toeplitz form (used wherever its matrices fit TOEPLITZ_W_BYTES per layer, the zoo's grids included):

    (B, H, W*C)       --(2F x H) real DFT along H-->                  (B, 2F, W*C) = (B, F, 2W, C): rows (f, re|im, w)
    split into heads  --per head, (F, 2Wo, 2W) complex Toeplitz-->    (B, F, 2Wo, C/heads), concatenated back
    (B, 2F, Wo*C)     --(Ho x 2F) inverse real DFT along H-->         (B, Ho, Wo*C) = tokens (B, Ho*Wo, C)

In the H-frequency domain the conv is a 1-D correlation along W per bin; its Toeplitz matrix differs per head, so
the channels are split by head (Split and Concat, no Transpose) and each head gets one batched MatMul. At
lkca_seg_tiny's 32x32 grid and K63 that is 50 M multiply-adds per layer; the blocks (6 MiB per layer there) are a
Gather from a 0.3 MiB table, folded by the runtime when it loads the model.

The DFT form (grids too large for the Toeplitz blocks, which grow as W^2 * H):

    (B, H, W, C)   --(2F x W) real DFT along W-->         (B, H, 2F, C) = (B, 2H, F*C): rows (h, re|im)
    (B, 2H, F*C)   --(2Ph x 2H) complex DFT along H-->    (B, 2, Ph, F, heads, C/heads)
    times the kernel's spectrum, one per head broadcast over the head's channels (see `_product`)
    (B, 2Ph, F*C)  --(2Ho x 2Ph) inverse DFT along H-->   (B, 2Ho, F*C) = (B, Ho, 2F, C)
    (B, Ho, 2F, C) --(Wo x 2F) inverse real DFT along W--> (B, Ho, Wo, C) = tokens (B, Ho*Wo, C)

124 M multiply-adds per layer at 32x32 / K63. Either way only Reshape, MatMul, Split, Concat, Gather, Expand (of
constants), Mul and Add remain: no Transpose (29% of lkca_seg_tiny's time in ONNX Runtime's profile of
the `spectral` lowering), no DFT op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.lowering import spectral
from lkca_runtime.onnx_io import constant_tensors, static_shapes

TOKEN_PERM = [0, 2, 1]


@dataclass(frozen=True)
class Mixer:
    """One matched mixer around a conv: the token tensors it reads and writes, and its five nodes (graph indices)."""

    tokens_in: str  # (B, H*W, C)
    tokens_out: str  # (B, Ho*Wo, C)
    nodes: tuple[int, ...]  # Transpose, Reshape, Conv, Reshape, Transpose


def find_mixers(model: onnx.ModelProto, sites) -> dict[int, Mixer | str]:
    """For each conv site (passes.ConvSite, static grid and weight): its whole token-layout mixer, or why the graph
    around the conv is not that pattern. Keyed by the conv's graph index."""
    graph = model.graph
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    constants = constant_tensors(graph)
    shapes = static_shapes(model)

    def only_reader(tensor: str) -> int | None:
        readers = consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in graph_outputs else None

    def int_constant(name: str) -> list[int] | None:
        return numpy_helper.to_array(constants[name]).tolist() if name in constants else None

    found: dict[int, Mixer | str] = {}
    for site in sites:
        channels, (h, w), (ho, wo) = site.weight.shape[0], site.grid, site.out_grid
        # tokens -> Transpose -> Reshape -> conv
        reshape_in = producers.get(site.node.input[0])
        transpose_in = producers.get(graph.node[reshape_in].input[0]) if _is(graph, reshape_in, "Reshape") else None
        ok_in = (
            _is(graph, transpose_in, "Transpose")
            and only_reader(site.node.input[0]) == site.index
            and only_reader(graph.node[reshape_in].input[0]) == reshape_in
            and _perm(graph.node[transpose_in]) == TOKEN_PERM
            and _splits_last_axis(int_constant(graph.node[reshape_in].input[1]), channels, (h, w))
            and _token_shape(shapes.get(graph.node[transpose_in].input[0]), h * w, channels)
        )
        if not ok_in:
            found[site.index] = "its input is not tokens (B, H*W, C) brought to the grid by Transpose + Reshape alone"
            continue
        # conv -> Reshape -> Transpose -> tokens
        reshape_out = only_reader(site.node.output[0])
        transpose_out = only_reader(graph.node[reshape_out].output[0]) if _is(graph, reshape_out, "Reshape") else None
        ok_out = (
            _is(graph, transpose_out, "Transpose")
            and _perm(graph.node[transpose_out]) == TOKEN_PERM
            and _joins_last_axes(int_constant(graph.node[reshape_out].input[1]), channels, ho * wo)
        )
        if not ok_out:
            found[site.index] = "its output does not go back to tokens (B, Ho*Wo, C) by Reshape + Transpose alone"
            continue
        found[site.index] = Mixer(
            graph.node[transpose_in].input[0],
            graph.node[transpose_out].output[0],
            (transpose_in, reshape_in, site.index, reshape_out, transpose_out),
        )
    return found


# ---------------------------------------------------------------- the rewrite


class _Builder:
    """Nodes and constants of one rewrite, named after the conv they replace (`names`: passes' fresh names)."""

    def __init__(self, base: str, names, dtype: np.dtype):
        self.base, self.names, self.dtype = base, names, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, tag: str, array: np.ndarray, dtype=None) -> str:
        array = np.ascontiguousarray(array, dtype=dtype or self.dtype)
        self.initializers.append(numpy_helper.from_array(array, self.names.fresh(f"{self.base}/{tag}")))
        return self.initializers[-1].name

    def node(self, op: str, inputs: list[str], tag: str, output: str | None = None, **attrs) -> str:
        output = output or self.names.fresh(f"{self.base}/{tag}")
        name = self.names.fresh(f"{self.base}/{tag}")
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def view(self, t: str, tag: str, dims: list[int], output: str | None = None) -> str:
        shape = self.const(f"{tag}_shape", np.array([-1, *dims]), np.int64)  # batch -1: it stays dynamic
        return self.node("Reshape", [t, shape], tag, output)

    @property
    def weight_bytes(self) -> int:
        return sum(
            int(np.prod(i.dims)) * self.dtype.itemsize for i in self.initializers if i.data_type != onnx.TensorProto.INT64
        )


@dataclass
class MixerRewrite:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    weight_bytes: int  # float constants added to the file
    runtime_bytes: int  # what the runtime holds once it has folded the constant subgraphs (Expand, Gather)
    what: str  # the form, for the lowering report


TOEPLITZ_W_BYTES = 16 * 2**20  # per layer, held by the runtime: above it the mixer keeps the DFT along W too


def rewrite_mixer(site, mixer: Mixer, heads: int, names) -> MixerRewrite:
    """The nodes that compute `mixer.tokens_out` from `mixer.tokens_in` in token layout (see the module docstring).

    `site`: the conv (passes.ConvSite), `heads`: contiguous channel blocks sharing one kernel. The Toeplitz form
    where its matrices fit TOEPLITZ_W_BYTES (it does fewer multiply-adds at every grid, but its matrices grow as
    W^2 * H), else the DFT along both axes."""
    if toeplitz_w_bytes(site, heads) <= TOEPLITZ_W_BYTES:
        return _rewrite_toeplitz_w(site, mixer, heads, names)
    return _rewrite_dft_hw(site, mixer, heads, names)


def toeplitz_w_bytes(site, heads: int) -> int:
    """What the Toeplitz form's (heads, F, 2Wo, 2W) matrices take once the runtime has built them."""
    (_, w), (_, wo) = site.grid, site.out_grid
    bins = spectral.periods(site.grid, site.out_grid)[0] // 2 + 1
    return heads * bins * 4 * wo * w * site.weight.dtype.itemsize


def _rewrite_toeplitz_w(site, mixer: Mixer, heads: int, names) -> MixerRewrite:
    """Real DFT along H; per H-bin and head, a complex Toeplitz product along W; the inverse real DFT along H."""
    channels = site.weight.shape[0]
    depth = channels // heads
    (h, w), (ho, wo) = site.grid, site.out_grid
    ph = spectral.periods(site.grid, site.out_grid)[0]
    bins = ph // 2 + 1
    kernels = site.weight.reshape(heads, depth, *site.kernel)[:, 0]
    table, index = spectral.w_toeplitz(kernels, site.grid, site.out_grid, site.pads[:2], site.dilations)
    g = _Builder(site.name, names, site.weight.dtype)
    t = g.view(mixer.tokens_in, "rows", [h, w * channels])
    t = g.node("MatMul", [g.const("dft_h", bins_outer(spectral.forward_w(h, ph).T, bins)), t], "dft_h")
    t = g.view(t, "bins", [bins, 2 * w, channels])  # (B, F, 2W, C): rows (f, re|im, w)
    # Each head's (F, 2Wo, 2W) blocks are a Gather from its small table, folded by the runtime at load: the file
    # keeps 3 values per kernel column offset, not the blocks (6 MiB per lkca_seg_tiny layer).
    index = g.const("toeplitz_index", index, np.int64)
    parts = _split(g, t, [depth] * heads, axis=-1, tag="head") if heads > 1 else [t]
    outs = [
        g.node("MatMul", [g.node("Gather", [g.const(f"toeplitz_table{i}", table[i]), index], f"blocks{i}", axis=1), x],
               f"toeplitz_w{i}")
        for i, x in enumerate(parts)
    ]
    t = g.node("Concat", outs, "heads", axis=-1) if heads > 1 else outs[0]  # (B, F, 2Wo, C): rows (f, re|im, j)
    t = g.view(t, "spectrum", [2 * bins, wo * channels])
    t = g.node("MatMul", [g.const("idft_h", bins_outer(spectral.inverse_w(ph, ho), bins).T), t], "idft_h")
    bias = site.node.input[2] if len(site.node.input) > 2 else ""
    t = g.view(t, "tokens", [ho * wo, channels], None if bias else mixer.tokens_out)
    if bias:  # not in the toolkit's exports; one value per channel, the tokens' last axis
        g.node("Add", [t, bias], "bias", mixer.tokens_out)
    runtime = g.weight_bytes - table.size * site.weight.dtype.itemsize + toeplitz_w_bytes(site, heads)
    what = (f"a real DFT along H (period {ph}) and per head a Toeplitz product along W ({heads} x {bins} "
            f"{2 * wo}x{2 * w} blocks)")
    return MixerRewrite(g.nodes, g.initializers, g.weight_bytes, runtime, what)


def bins_outer(m: np.ndarray, bins: int) -> np.ndarray:
    """A DFT matrix whose rows come (re|im, f) with rows (f, re|im) instead: each bin's two parts side by side,
    so that a bin's [re | im] rows and the W axis after them form one contiguous (2W) axis."""
    return m.reshape(2, bins, -1).transpose(1, 0, 2).reshape(2 * bins, -1)


def _split(g: _Builder, t: str, sizes: list[int], *, axis: int, tag: str) -> list[str]:
    outputs = [g.names.fresh(f"{g.base}/{tag}{i}") for i in range(len(sizes))]
    split = g.const(f"{tag}_sizes", np.array(sizes), np.int64)
    g.nodes.append(helper.make_node("Split", [t, split], outputs, name=g.names.fresh(f"{g.base}/{tag}s"), axis=axis))
    return outputs


def _rewrite_dft_hw(site, mixer: Mixer, heads: int, names) -> MixerRewrite:
    """Real DFT along W, complex DFT along H, the per-head product, and back."""
    channels = site.weight.shape[0]
    depth = channels // heads
    (h, w), (ho, wo) = site.grid, site.out_grid
    ph, pw = spectral.periods(site.grid, site.out_grid)
    bins = pw // 2 + 1
    kernels = site.weight.reshape(heads, depth, *site.kernel)[:, 0]
    spectrum = spectral.kernel_spectrum(kernels, site.grid, site.out_grid, site.pads[:2], site.dilations)
    spectrum = spectrum.transpose(1, 2, 0)[..., None]  # (Ph, F, heads, 1): one value per head
    g = _Builder(site.name, names, site.weight.dtype)
    t = g.view(mixer.tokens_in, "grid", [h, w, channels])
    t = g.node("MatMul", [g.const("dft_w", spectral.forward_w(w, pw).T), t], "dft_w")  # (B, H, 2F, C)
    t = g.view(t, "rows", [2 * h, bins * channels])  # rows (h, re|im)
    t = g.node("MatMul", [g.const("dft_h", left_forward_h(h, ph)), t], "dft_h")  # (B, 2Ph, F*C), rows (re|im, p)
    t = g.view(_product(g, t, spectrum, ph, bins, heads, depth), "spectrum", [2 * ph, bins * channels])
    t = g.node("MatMul", [g.const("idft_h", left_inverse_h(ph, ho)), t], "idft_h")  # (B, 2Ho, F*C), rows (i, re|im)
    t = g.view(t, "bins", [ho, 2 * bins, channels])
    t = g.node("MatMul", [g.const("idft_w", spectral.inverse_w(pw, wo).T), t], "idft_w")  # (B, Ho, Wo, C)
    bias = site.node.input[2] if len(site.node.input) > 2 else ""
    t = g.view(t, "tokens", [ho * wo, channels], None if bias else mixer.tokens_out)
    if bias:  # not in the toolkit's exports; one value per channel, the tokens' last axis
        g.node("Add", [t, bias], "bias", mixer.tokens_out)
    expanded = 2 * 2 * ph * bins * channels * site.weight.dtype.itemsize  # the two factors, per channel
    factors = 2 * 2 * ph * bins * heads * site.weight.dtype.itemsize
    what = f"DFT matmuls with periods {ph}x{pw} and {heads} kernel spectra"
    return MixerRewrite(g.nodes, g.initializers, g.weight_bytes, g.weight_bytes - factors + expanded, what)


def _product(g: _Builder, t: str, spectrum: np.ndarray, ph: int, bins: int, heads: int, depth: int) -> str:
    """The input's spectrum times the kernel's, per head: (a + ib)(kr + i ki) = [a kr - b ki | b kr + a ki].

    Written [a | b] * [kr | kr] + [b | a] * [-ki | ki], the swap a Gather on the re|im axis. The factors are stored
    once per head and Expanded to every channel in the graph: ONNX Runtime and OpenVINO fold the Expand when they
    load the model, so the file stays small and the Muls need no broadcast over a head's channels (with it, ONNX
    Runtime ran lkca_seg_tiny 4% slower: benchmarks/segmentation_speed.py's note).
    """
    re, im = spectrum.real, spectrum.imag
    z = g.view(t, "heads", [2, ph, bins, heads, depth])
    per_channel = g.const("per_channel", np.array([2, ph, bins, heads, depth]), np.int64)
    same, cross = (
        g.node("Expand", [g.const(tag, np.stack(pair)), per_channel], f"{tag}_per_channel")
        for tag, pair in (("spectrum_re", (re, re)), ("spectrum_im", (-im, im)))
    )
    swapped = g.node("Gather", [z, g.const("swap_index", np.array([1, 0]), np.int64)], "swap_re_im", axis=1)
    return g.node("Add", [g.node("Mul", [z, same], "times_re"), g.node("Mul", [swapped, cross], "times_im")], "product")


# ---------------------------------------------------------------- DFT along H, acting from the left


def left_forward_h(h: int, ph: int) -> np.ndarray:
    """(2Ph, 2H): rows (re|im, p) of the length-Ph DFT of H complex samples held as rows (h, re|im)."""
    e = np.exp(-2j * np.pi * np.outer(np.arange(ph), np.arange(h)) / ph)  # (Ph, H)
    m = np.empty((2, ph, h, 2))
    m[0, :, :, 0], m[0, :, :, 1] = e.real, -e.imag
    m[1, :, :, 0], m[1, :, :, 1] = e.imag, e.real
    return m.reshape(2 * ph, 2 * h)


def left_inverse_h(ph: int, ho: int) -> np.ndarray:
    """(2Ho, 2Ph): rows (i, re|im), i < Ho, of the inverse length-Ph DFT of rows (re|im, p)."""
    e = np.exp(2j * np.pi * np.outer(np.arange(ho), np.arange(ph)) / ph) / ph  # (Ho, Ph)
    m = np.empty((ho, 2, 2, ph))
    m[:, 0, 0], m[:, 0, 1] = e.real, -e.imag
    m[:, 1, 0], m[:, 1, 1] = e.imag, e.real
    return m.reshape(2 * ho, 2 * ph)


# ---------------------------------------------------------------- matching


def _is(graph: onnx.GraphProto, index: int | None, op: str) -> bool:
    return index is not None and graph.node[index].op_type == op and graph.node[index].domain in ("", "ai.onnx")


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _splits_last_axis(shape: list[int] | None, channels: int, grid: tuple[int, int]) -> bool:
    """A Reshape target (B|-1, C, H, W): (B, C, H*W) -> the grid, nothing else moved."""
    return shape is not None and len(shape) == 4 and shape[0] != 0 and shape[1:] == [channels, *grid]


def _joins_last_axes(shape: list[int] | None, channels: int, tokens: int) -> bool:
    """A Reshape target (B|-1, C, Ho*Wo): the grid back to one token axis."""
    return shape is not None and len(shape) == 3 and shape[0] != 0 and shape[1:] == [channels, tokens]


def _token_shape(shape: tuple | None, tokens: int, channels: int) -> bool:
    """Static token and channel axes: (B, H*W, C)."""
    return shape is not None and len(shape) == 3 and tuple(shape[1:]) == (tokens, channels)
