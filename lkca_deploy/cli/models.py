"""Model commands: list the zoo, train, evaluate."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from lkca_deploy.cli.common import SCALE_HELP, STRIDE_HELP, app, echo_json
from lkca_deploy.ranges import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, option
from lkca_runtime.masks import cli_slide


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="One JSON list on stdout.")) -> None:
    """List the model zoo: params, GFLOPs, input size, grid and kernel."""
    from lkca_deploy.models.zoo import list_models, model_summary

    rows = [model_summary(name) for name in list_models()]
    if as_json:
        echo_json(rows)
        return
    typer.echo(f"{'name':<22} {'task':<14} {'params':>9} {'GFLOPs':>8} {'input':>11} {'grid':>7} {'kernel':>7}")
    for r in rows:
        kernel = "x".join(map(str, r["kernel"])) if r["kernel"] else "-"
        typer.echo(f"{r['name']:<22} {r['task']:<14} {r['params'] / 1e6:>8.2f}M {r['gflops']:>8.3f} "
                   f"{'x'.join(map(str, r['input_size'])):>11} {'x'.join(map(str, r['grid'])):>7} {kernel:>7}")


@app.command()
def train(
    model: str = typer.Argument(..., help="Zoo name (see `lkca-deploy models`)."),
    data: str = typer.Option("digits", help="digits | cifar10 | cifar100 | svhn | tiny-imagenet | digit-scenes | "
                                            "ade20k | a folder."),
    epochs: int | None = option(None, "Epochs (default: per data set).", POSITIVE_INT),
    batch_size: int | None = option(None, "Batch size (default: per data set).", POSITIVE_INT),
    lr: float = option(2e-3, "Peak learning rate (AdamW, cosine with warm-up).", POSITIVE),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    out: Path | None = typer.Option(None, help="Checkpoint directory (default runs/MODEL-DATA)."),
    resume: Path | None = typer.Option(None, help="Continue training this checkpoint."),
    force: bool = typer.Option(False, help="Replace an existing checkpoint at --out (never another folder)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    seed: int = option(0, "Random seed.", NON_NEGATIVE_INT),
    view: str | None = typer.Option(None, help="LKCA view for training: conv | attention | fft (default: "
                                                  "the faster one for the grid)."),
    workers: int = option(0, "Data loader worker processes.", NON_NEGATIVE_INT),
) -> None:
    """Train a zoo model on a data set and save a checkpoint (safetensors + config.json)."""
    from lkca_deploy.train import TrainOptions, default_batch_size, default_epochs
    from lkca_deploy.train import train as run_training

    out = out or Path("runs") / f"{model}-{Path(data).name}"
    # Resuming into the checkpoint itself replaces it: naming it twice is the consent --force gives.
    force = force or (resume is not None and Path(resume).resolve() == Path(out).resolve())
    opts = TrainOptions(epochs=default_epochs(data) if epochs is None else epochs,
                        batch_size=default_batch_size(data) if batch_size is None else batch_size,
                        lr=lr, device=device,
                        seed=seed, view=view, workers=workers, data_root=str(data_root) if data_root else None,
                        download=download, force=force)
    metrics = run_training(model, data, out=out, resume=resume, opts=opts)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 saves and reports
        return
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "per_class_iou"}
    typer.echo(f"saved {out}  {shown}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    data: str | None = typer.Option(None, help="Data set (default: the one it was trained on)."),
    split: str = typer.Option("test", help="Split to evaluate."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    slide: bool = typer.Option(False, help="Segmentation: sliding windows, mIoU at each image's own size."),
    stride: int | None = option(None, STRIDE_HELP, POSITIVE_INT),
    scale: float | None = option(None, SCALE_HELP, POSITIVE),
) -> None:
    """Evaluate a checkpoint: top-1/top-5 (classification) or mIoU/pixel accuracy (segmentation)."""
    from lkca_deploy.train import evaluate as run_evaluation

    metrics = run_evaluation(checkpoint, data, split, data_root, download, device,
                             slide=cli_slide(slide, stride, scale))
    if as_json:
        echo_json(metrics)
    else:
        typer.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in metrics.items() if k != "per_class_iou"))


@app.command("import")
def import_(
    checkpoint: Path = typer.Argument(..., help="A .pth the other code wrote: its per-epoch training dict or its "
                                                "final state dict (with or without DataParallel's module. prefix)."),
    source: str = typer.Option(..., "--from", help="The code that trained it: lkca-official (the paper's trainer, "
                                                   "github.com/CatworldLee/LKCA-MiniViTsTrainer-Pytorch-CIFAR-"
                                                   "TinyImageNet)."),
    model: str = typer.Option(..., help="Its --model there: vit-lkca, vit-05m-lkca ... vit-12m-lkca, "
                                        "largevit-cnn, largevit-vit, or the MHSA baselines vit, vit-05m ... vit-8m."),
    dataset: str = typer.Option(..., help="Its --dataset there: CIFAR10 | CIFAR100 | SVHN | T-IMNET (fixes "
                                          "input size, patch, classes and normalisation)."),
    out: Path = typer.Option(..., help="Checkpoint directory to write (safetensors + config.json)."),
    force: bool = typer.Option(False, help="Replace an existing checkpoint at --out (never another folder)."),
) -> None:
    """Import a checkpoint trained with other code as an ordinary checkpoint: evaluate, export, pipeline take it."""
    from lkca_deploy.official import import_checkpoint

    import_checkpoint(checkpoint, source, model, dataset, out, force=force, echo=typer.echo)
