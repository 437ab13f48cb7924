"""Tasks: the small object that brings what differs between classification and segmentation.

A task gives the trainer its loss, augmentation and metric; everything else (trainer, export, backends, reports,
bundle, predictor) takes the task and never forks on it.
"""

from __future__ import annotations

from lkca_runtime.spec import TASKS

__all__ = ["TASKS", "get_task"]


def get_task(name: str):
    if name == "classification":
        from lkca_deploy.tasks.classification import ClassificationTask

        return ClassificationTask()
    if name == "segmentation":
        from lkca_deploy.tasks.segmentation import SegmentationTask

        return SegmentationTask()
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
