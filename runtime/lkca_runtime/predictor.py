"""The torch-free runtime: load one engine from a bundle and label images with numpy, PIL and one backend.

Never imports torch (nor the model zoo, trainer or checkpoints, which do), so it runs on a Jetson or a small CPU box
that has only numpy, Pillow and ONNX Runtime, OpenVINO or TensorRT. A test checks `sys.modules`.

Segmentation masks: the engine's logits (at the model's input size) are upsampled bilinearly (half-pixel centres,
as torch's align_corners=False) to the image's own size, then argmaxed. Upsampling the logits rather than the
argmax is what the model's own head does inside the network and what whole-image evaluation does against
full-size labels, so masks match `evaluate`; nearest upsampling of the argmax would give blocky class boundaries.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lkca_runtime.backends.base import PRECISIONS, run_batched, static_batch
from lkca_runtime.backends.registry import BACKENDS, backend_status, get_loader
from lkca_runtime.backends.trtexec import parse_device
from lkca_runtime.bundle import (
    Manifest,
    check_engine_precision,
    engine_name,
    inside,
    read_manifest,
    require_whole,
)
from lkca_runtime.device_build import choose_build, device_builds, provide_engine
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_files, atomic_output, guard_output
from lkca_runtime.masks import Slide, resize_bilinear, slide_image_logits, slide_options, upsampled_argmax
from lkca_runtime.spec import PreprocessSpec
from lkca_runtime.suitability import unsuitable
from lkca_runtime.verify_engine import VERIFY_MODES, golden_info, load_golden, verify_loaded

AUTO = "auto"
# "auto" takes the first of these that is installed here and present in the bundle: fastest where it exists.
BACKEND_PREFERENCE = ("tensorrt", "openvino", "onnxruntime")
# Without timings the most exact engine wins.
_EXACTNESS = {p: i for i, p in enumerate(PRECISIONS)}
_PREDICT_CHUNK = 32  # images preprocessed at once by predict(): bounds memory for long image lists
_UNTINTED = ("background", "other", "unlabeled")  # classes the overlay leaves as they are
_OVERLAY_ALPHA = 0.5

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray


# ---------------------------------------------------------------- engine choice (pure)


def choose_engine(
    engines: Sequence[dict[str, Any]],
    backend: str = AUTO,
    precision: str | None = None,
    status: Callable[[str], tuple[bool, str]] = backend_status,
    unsuitable: Callable[[dict[str, Any]], str | None] | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The engine to load: see Predictor. `status(name)` says whether a backend is installed (tests pass their own).
    `unsuitable(engine)`: why this machine must pass an engine over (suitability.unsuitable), consulted whenever
    the choice is automatic (no precision named); each engine passed over is appended to `skipped` as
    (name, reason)."""
    if unsuitable is not None and (backend == AUTO or precision is None):
        engines = _suitable(engines, unsuitable, skipped if skipped is not None else [])

    if not engines:
        raise UserError("the bundle has no engines: rebuild it with lkca-deploy pipeline")
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    present = list(dict.fromkeys(e["backend"] for e in engines))
    if backend == AUTO:
        return _choose_auto(engines, present, precision, status)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose auto or one of {', '.join(BACKENDS)}")
    if backend not in present:
        raise UserError(f"the bundle has no {backend} engine; it has: {', '.join(present)}")
    installed, reason = status(backend)
    if not installed:
        raise UserError(reason)
    return _best_of(engines, backend, precision, explicit=True)


def _choose_auto(engines, present, precision, status) -> dict[str, Any]:
    ordered = [b for b in BACKEND_PREFERENCE if b in present] + [
        b for b in present if b not in BACKEND_PREFERENCE
    ]
    hints = {}
    for name in ordered:
        installed, reason = status(name)
        if not installed:
            hints[name] = reason
            continue
        engine = _best_of(engines, name, precision, explicit=False)
        if engine is not None:
            return engine
    if len(hints) == len(ordered):
        raise UserError(
            f"none of the bundle's backends ({', '.join(present)}) is installed here: {hints[ordered[-1]]}"
        )
    wanted = f" at {precision}" if precision else ""
    raise UserError(
        f"no engine{wanted} in the bundle passed parity on an installed backend: "
        "choose one explicitly with backend=... and precision=..."
    )


def _best_of(engines, backend: str, precision: str | None, *, explicit: bool) -> dict[str, Any] | None:
    """The backend's best engine: passed first (then unjudged; failed only when asked for by precision), fastest
    by p50 at batch 1, the most exact precision when untimed. None (auto) or UserError (explicit) when none fits."""
    own = [e for e in engines if e["backend"] == backend]
    if precision is not None:
        offered = sorted({e["precision"] for e in own}, key=_EXACTNESS.get)
        own = [e for e in own if e["precision"] == precision]
        if not own:
            if not explicit:
                return None
            raise UserError(
                f"the bundle has no {backend} engine at {precision}; it has: {', '.join(offered)}"
            )
    for group in ([e for e in own if e.get("passed") is True], [e for e in own if e.get("passed") is None]):
        if group:
            return min(group, key=_speed_key)
    if not explicit:
        return None
    if precision is None:
        raise UserError(
            f"every {backend} engine in the bundle failed parity: choose one explicitly with precision=..."
        )
    engine = min(own, key=_speed_key)
    warnings.warn(f"the {backend} {precision} engine failed parity when the bundle was built", stacklevel=3)
    return engine


def _suitable(engines, unsuitable, skipped: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The engines this machine can take, in the bundle's order; the others go to `skipped`."""
    kept = []
    for engine in engines:
        why = unsuitable(engine)
        if why is None:
            kept.append(engine)
        else:
            skipped.append((engine_name(engine), why))
    return kept


def _speed_key(engine: dict[str, Any]) -> tuple:
    p50 = (engine.get("p50_ms") or {}).get("1")
    return (p50 is None, p50 or 0.0, _EXACTNESS.get(engine["precision"], len(PRECISIONS)))


# ---------------------------------------------------------------- images


def image_name(image: ImageLike, index: int) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"image #{index}"


def open_image(image: ImageLike, index: int, spec: PreprocessSpec):
    """A path, PIL image or HxW / HxWxC (C = 1, 3, 4) array as a PIL image in the spec's mode (L or RGB).

    UserError naming the input when it is not an image."""
    from PIL import Image

    original = image
    if isinstance(image, (str, Path)):
        image = _read_image_file(Path(image))
    elif isinstance(image, np.ndarray):
        image = _checked_array(image, index)
    elif not isinstance(image, Image.Image):
        raise UserError(f"image #{index} is a {type(image).__name__}, not a path, PIL image or numpy array")
    try:
        return spec.to_pil(image)
    except ValueError as e:  # pixel values with no 8-bit meaning (NaN, negative, complex): refused, never clipped
        raise UserError(f"{image_name(original, index)}: {e}") from None


def _checked_array(image: np.ndarray, index: int) -> np.ndarray:
    array = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not shape_ok or array.size == 0 or array.dtype.kind not in "uif":  # complex and bool hold no pixels
        raise UserError(
            f"image #{index} is an array of shape {image.shape} and dtype {image.dtype}, not an image: "
            "pass HxW or HxWxC (C = 1, 3 or 4) uint8"
        )
    return array


def _read_image_file(path: Path):
    from PIL import Image

    if not path.exists():
        raise UserError(f"image {path} does not exist")
    if not path.is_file():
        raise UserError(f"{path} is not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(
            f"{path} is not an image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None


# ---------------------------------------------------------------- numpy maths


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------- masks on disk


def palette(n: int) -> np.ndarray:
    """A fixed (n, 3) uint8 colour table (PASCAL VOC's bit-interleaved palette, repeating after 256)."""
    ids = np.arange(n) % 256
    colours = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


def overlay(
    image, mask: np.ndarray, untinted: Sequence[int] = (), alpha: float = _OVERLAY_ALPHA
) -> np.ndarray:
    """The RGB image with each class's colour blended over its pixels (HxWx3 uint8)."""
    from PIL import Image

    rgb = image.convert("RGB")
    if rgb.size != (mask.shape[1], mask.shape[0]):
        rgb = rgb.resize((mask.shape[1], mask.shape[0]), Image.BILINEAR)
    base = np.asarray(rgb, dtype=np.float32)
    colours = palette(int(mask.max()) + 1)[mask].astype(np.float32)
    weight = np.where(np.isin(mask, list(untinted)), 0.0, alpha)[..., None]
    return np.clip(base * (1 - weight) + colours * weight + 0.5, 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------- the predictor


class Predictor:
    """Run a bundle's engine on images: `Predictor(bundle)(image)`.

    backend "auto": the first of tensorrt, openvino, onnxruntime that is installed here and in the bundle. Among
    that backend's engines (at `precision` if given): those that passed parity, then unjudged ones; the fastest by
    p50 at batch 1; without timings the most exact precision (fp32 first). The whole bundle is checked before
    anything loads (bundle.require_whole: no unlisted file, every file at its size and sha256), and the engine
    must compute in the precision the manifest names.

    backend "tensorrt" with a bundle that carries the TensorRT ONNX: the engine for this GPU and TensorRT is the
    bundle's own if it was built on a machine like this, else a cached device build, else built here now from
    the ONNX with the trtexec script's settings (device_build.py), proven before it is kept.

    verify: "first-use" (default) checks the engine on the bundle's golden samples the first time it is loaded
    on a machine (keyed by engine and machine fingerprint, records.py) and refuses to serve, with one line
    naming the engine and its numbers, when it misses its tolerance; later loads reuse the result. "always"
    checks on every load; "off" never. A bundle without golden samples is not checked (first-use) or refused
    (always). `self.verification` holds the check (None when none was made).

    Threads: one Predictor may be called from many threads at once, and each call gets its own answer. Its
    state after loading is read-only; decoding, preprocessing and postprocessing are per call; the engine runs
    concurrently on ONNX Runtime (InferenceSession.run is thread-safe) and OpenVINO (one infer request borrowed per
    call from a pool that grows to the calls in flight), and in turn on TensorRT (one execution context). Each
    call's engine threads come on top: with N calling threads, `threads=1` per call avoids oversubscribing the cores
    (benchmarks/predictor_threads.py measures 1, 2 and 8 threads).

    Images are read as a person sees them (spec.as_seen): EXIF orientation applied, transparency composited
    on the training data's background or refused when the model has none.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str = AUTO,
        precision: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        top_k: int = 5,
        verify: str = "first-use",
    ):
        if verify not in VERIFY_MODES:
            raise UserError(f"unknown verify mode {verify!r}: choose one of {', '.join(VERIFY_MODES)}")
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = read_manifest(self.bundle_dir)
        self.spec = self.manifest.spec
        self.task = self.manifest.task
        self.class_names = list(self.manifest.class_names or self.spec.class_names)
        self.top_k = _check_top_k(top_k)
        require_whole(self.bundle_dir, self.manifest)  # whole or not at all: see bundle.require_whole
        self.verification = None
        if backend == "tensorrt" and _device_builds(self.manifest):
            artifact = self._device_engine(precision, device)
        else:
            self.engine = self._choose(backend, precision)  # hashed by require_whole above
            artifact = inside(self.bundle_dir, self.engine["artifact"])
        self.runner = get_loader(self.engine["backend"]).load(artifact, device=device, threads=threads)
        try:
            check_engine_precision(self.engine, self.runner.info.get("precision"))
            self._check_input_shape()
        except BaseException:
            self.runner.close()
            raise
        if verify != "off" and self.verification is None:
            self._verify_on_load(verify)

    @classmethod
    def around(
        cls,
        runner,
        spec: PreprocessSpec,
        task: str | None = None,
        class_names: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> Predictor:
        """A Predictor on an engine already loaded, without a bundle: the pipeline times engines through these
        very stages before their bundle is written (measure/e2e.py)."""
        self = cls.__new__(cls)
        self.bundle_dir, self.manifest = None, None
        self.spec, self.task = spec, task or spec.task
        self.class_names = list(class_names or spec.class_names)
        self.top_k = _check_top_k(top_k)
        info = getattr(runner, "info", {})
        self.engine = {"backend": info.get("backend"), "precision": info.get("precision"), "artifact": "the engine"}
        self.runner = runner
        self.verification = None
        self._check_input_shape()
        return self

    def _choose(self, backend: str, precision: str | None) -> dict[str, Any]:
        """choose_engine over the engines this machine can take (suitability.py); one warning line names the
        engines passed over and why (also kept in self.skipped)."""
        self.skipped: list[tuple[str, str]] = []
        engine = choose_engine(self.manifest.engines, backend, precision, skipped=self.skipped,
                               unsuitable=lambda e: unsuitable(self.bundle_dir, self.manifest, e))
        if self.skipped:
            warnings.warn(f"using {engine_name(engine)}; skipped "
                          + "; ".join(f"{name} ({why})" for name, why in self.skipped), stacklevel=3)
        return engine

    # -- proof on this machine

    def verify(self):
        """Check the loaded engine on the bundle's golden samples now, record it for this machine, and return
        the verify_engine.EngineVerdict (passed or not: this never refuses)."""
        golden = load_golden(self.bundle_dir, self.manifest)
        self.verification = verify_loaded(self.bundle_dir, self.manifest, self.engine, self.runner, golden)
        return self.verification

    def _verify_on_load(self, mode: str) -> None:
        if golden_info(self.manifest) is None and mode == "first-use":
            return  # a bundle built without golden samples has nothing to check with
        try:
            golden = load_golden(self.bundle_dir, self.manifest)
            self.verification = verify_loaded(self.bundle_dir, self.manifest, self.engine, self.runner, golden,
                                              mode=mode)
        except BaseException:
            self.runner.close()
            raise
        if not self.verification.passed:
            self.runner.close()
            raise UserError(self.verification.refusal())

    def _device_engine(self, precision: str | None, device: str | None) -> Path:
        """A TensorRT engine for this device from the bundle's ONNX (device_build.py); UserError when TensorRT
        is missing or the engine fails its golden check."""
        installed, reason = backend_status("tensorrt")
        if not installed:
            raise UserError(reason)
        build = choose_build(self.manifest, precision)
        golden = load_golden(self.bundle_dir, self.manifest)
        artifact, self.engine, check = provide_engine(self.bundle_dir, self.manifest, build, golden,
                                                      gpu_index=parse_device(device)[0])
        if check is not None:
            self.verification = check
            if not check.passed:
                raise UserError(check.refusal())
        return artifact

    # -- public

    def __call__(
        self,
        image: ImageLike | Sequence[ImageLike],
        top_k: int | None = None,
        return_scores: bool = False,
        slide: bool | Slide = False,
    ):
        """Classification: [(label, score)] best first (a list of those for a list of images).
        Segmentation: an HxW int32 mask of class ids at the image's size; (mask, (K, H, W) softmax) with
        return_scores (a list of those for a list of images). `slide`: sliding-window inference instead of one
        whole-image resize; True for the defaults, or a masks.Slide(stride, scale) (see masks.py)."""
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        if not images:
            raise UserError("no images given: pass at least one image")
        slide = slide_options(slide, self.task, f"{self.bundle_dir} is a {self.task} bundle")
        pils = self.decode(images)
        if slide:
            logits = [slide_image_logits(im, self.spec, self.run, slide) for im in pils]
        else:
            logits = self.run(self.preprocess(pils))
        results = self.postprocess(logits, pils, top_k=top_k, return_scores=return_scores)
        return results[0] if single else results

    # The four stages of a call, public so measure/e2e.py can time each one.

    def decode(self, images: Sequence[ImageLike]) -> list:
        """Paths, PIL images or arrays -> PIL images in the spec's mode (UserError naming what is not an image)."""
        return [open_image(item, i, self.spec) for i, item in enumerate(images)]

    def preprocess(self, images: Sequence) -> np.ndarray:
        """PIL images -> float32 NCHW at the model's input size, normalised as in training."""
        return self.spec.preprocess(images)

    def postprocess(self, logits, images: Sequence, top_k: int | None = None, return_scores: bool = False) -> list:
        """Per image: [(label, score)] best first; or a mask at the image's own size ((mask, scores) with
        return_scores)."""
        if self.task == "segmentation":
            return [self._segment(lg, (im.height, im.width), return_scores) for lg, im in zip(logits, images)]
        if return_scores:
            raise ValueError("return_scores is for segmentation; classification results carry their scores")
        k = _check_top_k(self.top_k if top_k is None else top_k)
        return [self._top_k(p, k) for p in softmax(logits)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NCHW -> logits, in chunks the engine accepts (padded to a static batch size)."""
        static = static_batch(self.runner)
        return run_batched(self.runner, batch, step=static or self.runner.max_batch or len(batch), static=static)

    def save_mask(self, result, image: ImageLike, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.mask.png` (class ids) and `<stem>.overlay.png` (colours blended over the image)."""
        mask = result[0] if isinstance(result, tuple) else np.asarray(result)
        out_dir = Path(out_dir)
        ids = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)
        untinted = [i for i, name in enumerate(self.class_names) if name.lower() in _UNTINTED]
        mask_path = _save_png(ids, out_dir / f"{stem}.mask.png")
        overlay_path = _save_png(
            overlay(open_image(image, 0, _rgb(self.spec)), mask, untinted),
            out_dir / f"{stem}.overlay.png",
        )
        return mask_path, overlay_path

    @property
    def info(self) -> dict[str, Any]:
        """The chosen engine (backend, precision, lowering, artifact...) and how its runner runs."""
        return {**{k: v for k, v in self.engine.items() if k != "files"}, "runner": self.runner.info}

    def close(self) -> None:
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _check_input_shape(self) -> None:
        expected = tuple(self.spec.input_shape)
        got = tuple(self.runner.input_shape[1:])
        if any(g is not None and g != e for g, e in zip(got, expected)) or len(got) != len(expected):
            raise UserError(
                f"engine {self.engine['artifact']} takes {got}, but the bundle's preprocessing makes {expected}: "
                "rebuild the bundle"
            )

    def _label(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def _top_k(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        best = np.argsort(-probs, kind="stable")[:k]
        return [(self._label(int(i)), float(probs[i])) for i in best]

    def _segment(self, logits: np.ndarray, size: tuple[int, int], return_scores: bool):
        if not return_scores:
            return upsampled_argmax(logits, size)
        scores = softmax(resize_bilinear(logits, size), axis=0)
        return scores.argmax(axis=0).astype(np.int32), scores


def _rgb(spec: PreprocessSpec) -> PreprocessSpec:
    """The spec reading images in colour, for overlays (its mean and std, unused there, one per channel)."""
    return spec if spec.channels == 3 else replace(spec, channels=3, mean=spec.mean * 3, std=spec.std * 3)


def _device_builds(manifest: Manifest) -> list:
    return device_builds(manifest)


def _check_top_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UserError(f"top-k must be a positive integer, got {k!r}")
    return k


# ---------------------------------------------------------------- the CLI's function


def predict(
    bundle: str | Path,
    images: Sequence[ImageLike],
    backend: str = AUTO,
    top_k: int = 5,
    save_mask_dir: str | Path | None = None,
    *,
    precision: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    slide: bool | Slide = False,
    verify: str = "first-use",
) -> list[dict[str, Any]]:
    """JSON-friendly results, one dict per image, for `lkca-deploy predict` (`slide`, `verify`: Predictor's).

    Classification: {"image", "backend", "precision", "label", "score", "top_k": [{"label", "score"}]}.
    Segmentation: {"image", "backend", "precision", "height", "width", "class_pixels": {name: count}} plus
    "mask" and "overlay" paths with `save_mask_dir`.
    """
    images = list(images)
    if not images:
        raise UserError("no images given: pass at least one image")
    stems = _unique_stems(images)
    if save_mask_dir is not None:
        _guard_mask_outputs(Path(save_mask_dir), bundle, images, stems)
    with Predictor(
        bundle, backend=backend, precision=precision, device=device, threads=threads, top_k=top_k, verify=verify
    ) as p, (atomic_files(save_mask_dir) if save_mask_dir is not None else nullcontext()) as staging:
        if save_mask_dir is not None and p.task != "segmentation":
            raise UserError(f"--save-mask is for segmentation bundles; {bundle} is a {p.task} bundle")
        engine = {"backend": p.engine["backend"], "precision": p.engine["precision"]}
        results = []
        for start in range(0, len(images), _PREDICT_CHUNK):
            chunk = images[start : start + _PREDICT_CHUNK]
            for offset, outcome in enumerate(p(chunk, slide=slide)):
                i = start + offset
                entry = {"image": image_name(images[i], i), **engine}
                if p.task == "segmentation":
                    entry.update(_mask_summary(outcome, p.class_names))
                    if save_mask_dir is not None:  # written to `staging`, all renamed into place at the end
                        written = p.save_mask(outcome, images[i], staging, stems[i])
                        mask_path, overlay_path = (Path(save_mask_dir) / w.name for w in written)
                        entry.update(mask=str(mask_path), overlay=str(overlay_path))
                else:
                    entry.update(
                        label=outcome[0][0],
                        score=outcome[0][1],
                        top_k=[{"label": label, "score": score} for label, score in outcome],
                    )
                results.append(entry)
        return results


def _guard_mask_outputs(folder: Path, bundle, images: Sequence[ImageLike], stems: Sequence[str]) -> None:
    """Masks go neither into the bundle (nor onto it) nor over one of the images they come from."""
    guard_output(folder, [bundle], folder=True)
    sources = [image for image in images if isinstance(image, (str, Path))]
    for stem in stems:
        for name in (f"{stem}.mask.png", f"{stem}.overlay.png"):
            guard_output(folder / name, sources)


def _mask_summary(mask: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    ids, counts = np.unique(mask, return_counts=True)
    names = [class_names[i] if i < len(class_names) else str(i) for i in ids]
    return {
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "class_pixels": {name: int(c) for name, c in zip(names, counts)},
    }


def _unique_stems(images: Sequence[ImageLike]) -> list[str]:
    """File stems for saved masks: the image file's stem, made unique; `image<i>` for in-memory images."""
    stems, seen = [], set()
    for i, image in enumerate(images):
        stem = Path(image).stem if isinstance(image, (str, Path)) else f"image{i}"
        candidate, n = stem, 1
        while candidate in seen:
            n += 1
            candidate = f"{stem}-{n}"
        seen.add(candidate)
        stems.append(candidate)
    return stems
