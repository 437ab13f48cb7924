"""The task names: the one list, in a module that imports no task (reports validate names without cycles)."""

TASKS = ("classification", "segmentation")
