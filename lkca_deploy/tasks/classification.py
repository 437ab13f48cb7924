"""Image classification: cross-entropy with label smoothing, crop+flip for photos, top-1/top-5."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassificationTask:
    name = "classification"
    headline = "top1"  # the metric a progress bar and a summary show

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def augment(self, x: torch.Tensor, y: torch.Tensor, natural: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crop with padding (1/8 of the side); a horizontal flip for photos only, since it breaks digits."""
        x = random_crop(x, pad=max(1, x.shape[-1] // 8))
        if natural:
            x, _ = random_hflip(x)
        return x, y

    def meter(self, class_names=()) -> TopKMeter:
        return TopKMeter()


class TopKMeter:
    """Accumulates top-1 and top-5 over batches."""

    def __init__(self):
        self.correct1 = self.correct5 = self.samples = 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == target[:, None]
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.samples += len(target)

    def result(self) -> dict:
        n = max(self.samples, 1)
        return {"top1": self.correct1 / n, "top5": self.correct5 / n, "samples": self.samples}


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random translation by up to ``pad`` pixels (zero padding), the classic CIFAR crop."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,))
    ox = torch.randint(0, 2 * pad + 1, (b,))
    rows = (oy[:, None] + torch.arange(h)[None]).to(x.device)  # (B, H)
    cols = (ox[:, None] + torch.arange(w)[None]).to(x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip half the batch horizontally; returns the batch and the per-sample flip mask."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x), flip
