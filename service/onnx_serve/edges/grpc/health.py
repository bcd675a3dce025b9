"""grpc.health.v1 for the gRPC edge: Check and Watch, with statuses the server publishes.

grpc_health's own async servicer holds one condition lock across every Watch write; a client that never reads
(HTTP/2 window 0) then blocks each later status update and `enter_graceful_shutdown`, so it could stall a reload
and the drain. Here each watcher has a mailbox of one (the latest status): publishing never waits for a client,
and a stalled watcher only stalls its own call, which the server's grace period then cancels.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = int  # a HealthCheckResponse.ServingStatus value
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {}
        self._watchers: dict[str, set[asyncio.Queue[Status]]] = {}
        self._stopping = False

    def set(self, service: str, status: Status) -> None:
        """Publishes `status` for `service` ("" is the whole server); ignored once shutdown() ran, so that a late
        update cannot turn a draining server SERVING again."""
        if not self._stopping:
            self._publish(service, status)

    def shutdown(self, keep: Collection[str] = ()) -> None:
        """Every service but those in `keep` NOT_SERVING, for good."""
        self._stopping = True
        for service in list(self._statuses):
            if service not in keep:
                self._publish(service, NOT_SERVING)

    def _publish(self, service: str, status: Status) -> None:
        self._statuses[service] = status
        for mailbox in self._watchers.get(service, ()):
            if mailbox.full():  # the watcher has not taken the previous one: only the latest matters
                mailbox.get_nowait()
            mailbox.put_nowait(status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                    ) -> health_pb2.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:200]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        # As the protocol says: the current status first (SERVICE_UNKNOWN for a service not known yet), then each
        # change, until the client leaves or the server stops.
        mailbox: asyncio.Queue[Status] = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(request.service, set()).add(mailbox)
        try:
            last = self._statuses.get(request.service, SERVICE_UNKNOWN)
            yield health_pb2.HealthCheckResponse(status=last)
            while True:
                status = await mailbox.get()
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
        finally:
            watchers = self._watchers.get(request.service)
            if watchers is not None:
                watchers.discard(mailbox)
                if not watchers:
                    del self._watchers[request.service]
