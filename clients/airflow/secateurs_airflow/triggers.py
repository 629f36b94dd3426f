"""SecateursJobTrigger: polls a job with GetJob in the triggerer until it ends, so the task
frees its worker slot while the job runs."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc
from airflow.triggers.base import BaseTrigger, TriggerEvent
from secateurs_client import TERMINAL, pb

from secateurs_airflow.hooks import SecateursHook

# UNAVAILABLE (a server restarting, draining or unreachable) is waited out this many polls in a
# row; the server requeues and resumes its jobs across a restart.
UNAVAILABLE_POLLS = 30


class SecateursJobTrigger(BaseTrigger):
    """Fires one event when the job ends:
    {"job_id", "state": "SUCCEEDED" | "FAILED" | "CANCELLED", "error": {reason, message, field}},
    or {"job_id", "state": "ERROR", "error": {...}} when the server could not be asked."""

    def __init__(self, job_id: str, secateurs_conn_id: str = SecateursHook.default_conn_name,
                 poll_interval: float = 10.0) -> None:
        super().__init__()
        self.job_id = job_id
        self.secateurs_conn_id = secateurs_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job_id": self.job_id, "secateurs_conn_id": self.secateurs_conn_id,
                 "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        connection = await SecateursHook.aget_connection(self.secateurs_conn_id)
        unavailable, last_stage = 0, None
        with SecateursHook.client_for(connection) as client:
            while True:
                try:
                    # The client is synchronous: each call runs in a thread, off the event loop.
                    job = await asyncio.to_thread(client.get_job, self.job_id)
                except grpc.RpcError as err:
                    unavailable = unavailable + 1 if err.code() == grpc.StatusCode.UNAVAILABLE else UNAVAILABLE_POLLS
                    if unavailable >= UNAVAILABLE_POLLS:
                        yield TriggerEvent({"job_id": self.job_id, "state": "ERROR",
                                            "error": {"reason": err.code().name, "message": err.details() or ""}})
                        return
                    self.log.warning("job %s: %s, polling again", self.job_id, err.code().name)
                    await asyncio.sleep(self.poll_interval)
                    continue
                unavailable = 0
                if job.state in TERMINAL:
                    yield TriggerEvent({"job_id": job.id, "state": pb.JobState.Name(job.state),
                                        "error": {"reason": job.error.reason, "message": job.error.message,
                                                  "field": job.error.field}})
                    return
                if job.stage != last_stage:
                    self.log.info("job %s: %s, stage %s (%.0f%%)", job.id, pb.JobState.Name(job.state),
                                  job.stage or "-", 100 * job.progress)
                    last_stage = job.stage
                await asyncio.sleep(self.poll_interval)
