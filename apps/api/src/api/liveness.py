"""Whether a worker is alive to take queued work (``database.worker_registry``).

A queued job or a pending upload says ``waiting_for: "worker"`` when no worker is
alive: it is not lost, it waits until one starts. The database is asked at most
once per request, and only when something in the answer is waiting.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.orm import Session

from database import worker_registry

WaitingFor = Literal["worker"]


class WorkerCheck:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._none_alive: bool | None = None

    def waiting_for(self, waiting: bool) -> WaitingFor | None:
        """``"worker"`` when ``waiting`` work has no live worker to take it."""
        if not waiting:
            return None
        if self._none_alive is None:
            self._none_alive = worker_registry.alive_count(self.session.connection()) == 0
        return "worker" if self._none_alive else None
