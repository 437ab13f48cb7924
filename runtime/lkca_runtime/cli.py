"""`lkca-runtime`: the device's command line (verify, predict), argparse only, so it installs with numpy and PIL.

`lkca-deploy verify` and `lkca-deploy predict` print through the same functions. A user's mistake ends as one line
on stderr and exit code 2; a verification that fails exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from lkca_runtime.errors import UserError
from lkca_runtime.masks import cli_slide
from lkca_runtime.predictor import predict
from lkca_runtime.verify import verify_bundle

PROG = "lkca-runtime"


def strict_json(obj) -> str:
    """JSON that every parser reads: a NaN or infinite figure is null (a bare NaN is not JSON)."""
    return json.dumps(_finite(obj), indent=2, default=str, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def verify_table(result) -> str:
    """One row per engine: status, agreement, errors, task metric, the limits it was held to, seconds."""
    golden = result.golden
    lines = [result.machine["summary"],
             f"golden samples: {golden.get('samples')} ({golden.get('path')}, sha256 {golden.get('sha256', '')[:12]})",
             (f"{'engine':<26} {'status':<8} {'agree':>7} {'max err':>9} {'mean err':>9} {'metric':>15} "
              f"{'s':>5}  tolerance")]
    for c in result.checks:
        if c.status in ("skipped", "refused", "error"):
            lines.append(f"{c.engine:<26} {c.status:<8} {c.reason}")
            continue
        m = c.metrics
        agree = m.get("agreement", m.get("pixel_agreement"))
        metric = ("top1_drop", m.get("top1_drop")) if "top1_drop" in m else ("miou_drop", m.get("miou_drop"))
        metric_text = f"{metric[0]} {metric[1]:+.2f}" if metric[1] is not None else f"{metric[0]} -"
        limits = ", ".join(f"{k} {'>=' if k.endswith('agreement') else '<='} {v:g}" for k, v in c.tolerance.items())
        status = c.status + ("*" if c.cached else "")
        lines.append(f"{c.engine:<26} {status:<8} {agree:>7.4f} {m.get('max_abs_err', 0):>9.2e} "
                     f"{m.get('mean_abs_err', 0):>9.2e} {metric_text:>15} {c.seconds:>5.2f}  {limits}")
        lines += [f"    {f}" for f in c.failures]
    lines.append("PASSED" if result.passed else "FAILED")
    return "\n".join(lines)


def prediction_lines(results: list[dict[str, Any]]) -> list[str]:
    """One line per image: the label and its top-k, or the mask's size (and where it was written)."""
    lines = []
    for r in results:
        if "label" in r:
            shown = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"])
            lines.append(f"{r['image']}: {r['label']}  ({shown})")
        else:
            lines.append(f"{r['image']}: {r['height']}x{r['width']} mask" + (f" -> {r['mask']}" if "mask" in r else ""))
    return lines


def _positive(convert, noun: str):
    """An argparse type: `convert` of the text, refused unless a finite number > 0 (bad values exit 2 in one line)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is not a positive number")
        return value

    return parse


_positive_int = _positive(int, "an integer")
_positive_float = _positive(float, "a number")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every user error
        raise UserError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run and re-prove an lkca-deploy bundle on this device (no torch).")
    sub = parser.add_subparsers(dest="command", metavar="{verify,predict}", parser_class=_Parser)
    sub.required = True
    v = sub.add_parser("verify", help="re-prove engines on this machine with the bundle's golden samples")
    v.add_argument("bundle")
    pick = v.add_mutually_exclusive_group()
    pick.add_argument("--engine", help="one engine by name, e.g. onnxruntime/int8-cpu")
    pick.add_argument("--all", dest="all_engines", action="store_true", help="every engine of the bundle")
    v.add_argument("--backend", default="auto", help="auto | onnxruntime | openvino | tensorrt")
    v.add_argument("--precision", help="engine precision (default: the Predictor's choice)")
    v.add_argument("--json", dest="as_json", action="store_true", help="one JSON object on stdout")
    v.add_argument("--threads", type=_positive_int, help="inference threads")
    p = sub.add_parser("predict", help="label images (or segment them) with a bundle")
    p.add_argument("bundle")
    p.add_argument("images", nargs="+")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | openvino | tensorrt")
    p.add_argument("--precision", help="engine precision (default: the fastest that passed)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes to show per image")
    p.add_argument("--json", dest="as_json", action="store_true", help="JSON on stdout")
    p.add_argument("--save-mask", help="segmentation: write masks and overlays into this folder")
    p.add_argument("--slide", action="store_true", help="segmentation: sliding windows")
    p.add_argument("--stride", type=_positive_int, help="with --slide: window step in pixels")
    p.add_argument("--scale", type=_positive_float, help="with --slide: resize factor before sliding")
    p.add_argument("--verify", default="first-use", choices=("first-use", "always", "off"),
                   help="check the engine on the bundle's golden samples before serving")
    return parser


def _verify(args) -> int:
    result = verify_bundle(args.bundle, backend=args.backend, precision=args.precision, engine=args.engine,
                           all_engines=args.all_engines, threads=args.threads)
    print(strict_json(result.to_dict()) if args.as_json else verify_table(result))
    return result.exit_code()


def _predict(args) -> int:
    results = predict(args.bundle, args.images, args.backend, args.top_k, args.save_mask, precision=args.precision,
                      slide=cli_slide(args.slide, args.stride, args.scale), verify=args.verify)
    print(strict_json(results) if args.as_json else "\n".join(prediction_lines(results)))
    return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{PROG}: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> None:
    import warnings

    warnings.formatwarning = _one_line_warning  # e.g. the engines the Predictor passed over, as one line
    try:
        args = _parser().parse_args(argv)
        code = _verify(args) if args.command == "verify" else _predict(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
