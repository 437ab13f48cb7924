"""Tasks: the small object that brings what differs between classification and segmentation in training.

A task gives the trainer its loss, augmentation and metric; the trainer, lowering, backends and bundle writer take
any task as it is. Other places still fork on the task's name: the model's head, which loader opens a data set,
`--logits` (segmentation only), the INT8 search's metric, the reports' per-task keys, and in the runtime the parity
meter, the golden sets and the Predictor's output. README.md ("Architecture") lists each of them.
"""

from __future__ import annotations

from lkca_deploy.tasks.classification import ClassificationTask
from lkca_deploy.tasks.segmentation import SegmentationTask
from lkca_runtime.spec import TASKS

__all__ = ["TASKS", "get_task"]


def get_task(name: str):
    if name == "classification":

        return ClassificationTask()
    if name == "segmentation":

        return SegmentationTask()
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
