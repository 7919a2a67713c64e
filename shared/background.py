"""``BackgroundTask``: the lifecycle the services' long-running workers share (the sender's encoder
and deliverer, the receiver's cluster-mode frame worker): one asyncio task, started by ``start()``,
cancelled and awaited by ``stop()``. Plain asyncio, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine


class BackgroundTask:
    _task: asyncio.Task | None = None
    task_name = "latentwire-worker"

    def _run(self) -> Coroutine:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()
