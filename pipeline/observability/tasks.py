"""Where the event loop's unfinished tasks are waiting, for a log event.

A stop that does not finish is diagnosed from its log alone: the process is gone by the
time anyone looks, and a thread dump shows only the event loop's selector.
"""

from __future__ import annotations

import asyncio


def pending_task_frames(limit: int = 20) -> list[str]:
    """One line per unfinished task of the running loop (at most `limit`, the current one
    excluded): its name and the innermost frame it is suspended in."""
    current = asyncio.current_task()
    lines: list[str] = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        stack = task.get_stack()
        if stack:
            frame = stack[-1]
            code = frame.f_code
            where = f"{code.co_qualname} ({code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})"
        else:
            where = repr(task.get_coro())
        lines.append(f"{task.get_name()}: {where}")
    lines.sort()
    return lines[:limit]
