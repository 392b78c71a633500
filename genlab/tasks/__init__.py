"""Downstream tasks on a trained checkpoint: ``genlab-task <task> ckpt=... [key=value ...]``.

``genlab-task --help`` lists them; ``genlab-task <task> --help`` lists a task's options.
"""

from genlab.tasks.registry import TASKS, Task

__all__ = ["TASKS", "Task"]
