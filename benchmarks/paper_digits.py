"""The paper's data-scarce claim on real data that ships with the project: LKCA vs MHSA ViT on digits.

Trains lkca_vit_nano and vit_nano (same dims; MHSA with a position embedding) on scikit-learn's 1,437 training
digits for several seeds each, interleaving the two models seed by seed so machine noise hits both alike, and
prints test top-1 mean and spread, parameters and seconds.

    python benchmarks/paper_digits.py [--seeds 0 1 2] [--epochs 30] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics

from lkca_deploy.models.zoo import create_model
from lkca_deploy.train import TrainOptions, default_batch_size, default_epochs, train
from lkca_runtime.machine import isa_summary

MODELS = ("lkca_vit_nano", "vit_nano")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=default_epochs("digits"))
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {m: [] for m in MODELS}
    for seed in args.seeds:
        for model in MODELS:
            opts = TrainOptions(epochs=args.epochs, batch_size=default_batch_size("digits"), seed=seed,
                                progress=False)
            result = train(model, "digits", opts=opts)
            runs[model].append(result)
            print(f"{model} seed {seed}: top-1 {result['top1']:.4f} in {result['seconds']:.0f} s", flush=True)

    header = ["model", "mixer", "params", "test top-1 mean", "spread (min-max)", "s / run", "view"]
    rows = []
    for model in MODELS:
        top1 = [r["top1"] for r in runs[model]]
        params = sum(p.numel() for p in create_model(model).parameters())
        rows.append([model, "LKCA" if model.startswith("lkca") else "MHSA", f"{params / 1e3:.1f}k",
                     f"{100 * statistics.mean(top1):.2f}%",
                     f"{100 * min(top1):.2f}-{100 * max(top1):.2f}%",
                     f"{statistics.median(r['seconds'] for r in runs[model]):.0f}",
                     runs[model][0]["view"] or "-"])
    print(f"\ndigits, {args.epochs} epochs, seeds {args.seeds}; {isa_summary()}")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        for row in (header, *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
