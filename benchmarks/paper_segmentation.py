"""The paper's segmentation claim on the embedded data: LKCA against its MHSA twin on digit-scenes.

Trains lkca_seg_nano and vit_seg_nano for the same epochs on the same seeds (interleaved, so a machine that gets
busier mid-run slows both alike) and prints a markdown table: test mIoU mean, spread (std and range), seconds per
epoch (training plus the per-epoch test pass) and the LKCA view used. Takes minutes per run:
    python benchmarks/paper_segmentation.py --seeds 3 --epochs 15
"""

from __future__ import annotations

import argparse
import statistics
import sys

DATA = "digit-scenes"
MODELS = ("lkca_seg_nano", "vit_seg_nano")


# The digit-scenes recipe (measured: see tasks/segmentation.py); the trainer's per-data-set defaults win where set.
RECIPE = {"epochs": 15, "batch_size": 16}


def recipe_default(name: str) -> int:
    from lkca_deploy import train

    per_data_set = getattr(train, f"default_{name}", None)  # what `lkca-deploy train` uses, where it exists
    return per_data_set(DATA) if per_data_set else RECIPE[name]


def run(models: tuple[str, ...], seeds: int, epochs: int, batch_size: int, view: str | None
        ) -> dict[str, list[dict]]:
    from lkca_deploy.train import TrainOptions, train

    runs: dict[str, list[dict]] = {m: [] for m in models}
    for seed in range(seeds):
        for model in models:
            opts = TrainOptions(epochs=epochs, batch_size=batch_size, seed=seed, view=view, progress=False)
            result = train(model, DATA, opts=opts)
            runs[model].append(result)
            print(f"{model} seed {seed}: mIoU {result['miou']:.4f}, {result['seconds'] / epochs:.1f} s/epoch",
                  file=sys.stderr, flush=True)
    return runs


def table(runs: dict[str, list[dict]], epochs: int) -> str:
    from lkca_deploy.models.zoo import get_config, model_summary

    lines = ["| model | mixer | view | params | mIoU mean | std | min..max | s/epoch | seeds |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for model, results in runs.items():
        mious = [r["miou"] for r in results]
        per_epoch = statistics.mean(r["seconds"] / epochs for r in results)
        spread = statistics.stdev(mious) if len(mious) > 1 else 0.0
        lines.append(f"| {model} | {get_config(model).mixer} | {results[0]['view'] or '-'} | "
                     f"{model_summary(model)['params']:,} | {statistics.mean(mious):.4f} | {spread:.4f} | "
                     f"{min(mious):.4f}..{max(mious):.4f} | {per_epoch:.1f} | {len(results)} |")
    return "\n".join(lines)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per model")
    parser.add_argument("--epochs", type=int, default=None, help="default: the digit-scenes training default")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the digit-scenes training default")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--view", default=None, help="LKCA training view (default: the faster one for the grid)")
    args = parser.parse_args(argv)
    epochs = args.epochs or recipe_default("epochs")
    batch_size = args.batch_size or recipe_default("batch_size")

    from lkca_runtime.machine import isa_summary

    runs = run(tuple(args.models), args.seeds, epochs, batch_size, args.view)
    print(f"{DATA}, {epochs} epochs, batch {batch_size}, {args.seeds} seed(s), {torch_threads()} torch thread(s); "
          f"machine: {isa_summary()}\n")
    print(table(runs, epochs))


if __name__ == "__main__":
    main()
