"""The gRPC server shell both services share: health, reflection, probing, graceful stop."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import Gauge

from runtrack.v1 import summary_pb2, tracking_pb2
from runtrack_common import logs, metrics, tracing
from runtrack_common.aborts import ReleaseAborts
from runtrack_common.config import Settings
from runtrack_common.malformed import MalformedRequests

log = logging.getLogger(__name__)

# The whole public API, as Envoy shows it: reflection on every replica describes both services,
# so `grpcurl list` through Envoy sees everything whichever replica answers.
API_SERVICE_NAMES = (
    tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"].full_name,
    summary_pb2.DESCRIPTOR.services_by_name["SummaryService"].full_name,
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A health name that is SERVING while the process runs, whatever its store says: what a liveness probe
# asks (a store outage takes a replica out of the balancer, it is no reason to restart it).
LIVENESS = "liveness"
# What a replica's health probes say of its store: 1 while it answers (SERVING), 0 once two probes in a
# row failed (NOT_SERVING). Envoy then takes the replica out, so no call fails there any more and
# `runtrack_store_unavailable_total` stops rising while the store is still down: the store alerts
# (deploy/prometheus/causes.yaml) read this too.
STORE_READY = Gauge(
    "runtrack_store_ready",
    "1 while this replica's store answers its health probes, 0 while it does not (NOT_SERVING).",
    ("store",),
)
# The store each service's replicas depend on, as `runtrack_store_unavailable_total` names it.
STORES = {"tracking_service": "cql", "summary_service": "postgresql"}
# The cycle collector's thresholds (see `main`): a tracking replica's young generation is collected
# after 100,000 new container objects instead of 700, and the whole heap rarely: with thousands of
# streams open every collection walked all their objects, and at the default thresholds it took a third
# of a loaded tracking replica's CPU (`scripts/bench phones`: 10 s of 50 at 8,000 phones; 1.8 s with
# these). A summary replica holds no streams but answers many short calls, each leaving a small cycle
# of gRPC's own: 100,000 young objects took a 0.11 s pause to collect, every other call waiting; at
# 10,000 a collection takes ~6 ms (measured under the flood test's load).
GC_THRESHOLDS = (100_000, 50, 100)
SHORT_CALLS_GC_THRESHOLDS = (10_000, 50, 100)


def interceptors() -> list[grpc.aio.ServerInterceptor]:
    """A replica's, outermost first: ReleaseAborts must see every handler's AbortError; MalformedRequests
    reads a unary call's request as a stream of one message, and the metrics (inside it) still count the
    call by its method's kind (not one refused there). With traces on, the call's span encloses them all,
    so that every line they log carries its trace id."""
    return [*tracing.server_interceptors(), ReleaseAborts(), MalformedRequests(), metrics.ServerMetrics()]


def file_containing_symbol(pool: descriptor_pool.DescriptorPool, name: str) -> FileDescriptor:
    """The file that defines `name`: a service, a method, a message, a field, an enum or its value.

    The upb runtime's pool finds top-level symbols only, so `Service.Method` and `Message.field`
    (what `grpcurl describe` and `ghz --call` ask for) are resolved through their parent here.
    """
    try:
        return pool.FindFileContainingSymbol(name)
    except KeyError:
        parent, _, member = name.rpartition(".")
        if not parent:
            raise
    try:
        service = pool.FindServiceByName(parent)
    except KeyError:
        pass
    else:
        if member in service.methods_by_name:
            return service.file
        raise KeyError(name)
    message = pool.FindMessageTypeByName(parent)  # KeyError when it is not one either
    if (
        member in message.fields_by_name
        or member in message.nested_types_by_name
        or member in message.enum_types_by_name
    ):
        return message.file
    raise KeyError(name)


class ReflectionServicer(reflection.aio.ReflectionServicer):
    """Server reflection whose symbol look-ups also find methods and fields (in the default pool)."""

    def _file_containing_symbol(
        self, request: reflection_pb2.ServerReflectionRequest, fully_qualified_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        base: Any = super()  # the base class's helpers are not in its type stubs
        try:
            descriptor = file_containing_symbol(descriptor_pool.Default(), fully_qualified_name)
        except KeyError:
            answer = base._file_containing_symbol(request, fully_qualified_name)  # its NOT_FOUND
        else:
            answer = base._file_by_filename(request, descriptor.name)
        return cast(reflection_pb2.ServerReflectionResponse, answer)


# What reflection lists: the whole API, health and reflection itself (all callable through Envoy).
REFLECTED_SERVICES = (
    *API_SERVICE_NAMES,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def add_reflection(server: grpc.aio.Server) -> None:
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        ReflectionServicer(REFLECTED_SERVICES), server
    )


class Backend(Protocol):
    """The database a replica depends on."""

    async def ensure_ready(self) -> None:
        """Connects if needed and proves the database answers; raises when it does not."""

    async def close(self) -> None: ...


class Replica:
    """One replica process: a grpc.aio server whose health follows its database."""

    def __init__(
        self,
        *,
        service_name: str,
        settings: Settings,
        port: int,
        backend: Backend,
        register: Callable[[grpc.aio.Server], None],
        on_drain: Callable[[], Awaitable[None]] | None = None,
        on_start: Callable[[], None] | None = None,
        metrics_port: int | None = None,
        store: str = "",
    ) -> None:
        self.service_name = service_name
        self.store = store
        if store:
            STORE_READY.labels(store).set(0)  # until the first probe answers
            metrics.STORE_UNAVAILABLE.labels(store)  # at 0: a rate over it is 0, not missing
        self.settings = settings
        self.port = port
        self.metrics_port = metrics_port
        self.backend = backend
        self.register = register
        self.on_drain = on_drain
        self.on_start = on_start
        self.health = health.aio.HealthServicer()
        self.serving: bool | None = None
        self._last_error = ""
        self.draining = False
        self._stop = asyncio.Event()

    async def _set_health(self, serving: bool) -> None:
        if self.draining:
            return
        status = SERVING if serving else NOT_SERVING
        if self.store:
            STORE_READY.labels(self.store).set(1 if serving else 0)
        for name in ("", self.service_name):
            await self.health.set(name, status)
        if serving != self.serving:
            log.info("health service=%s status=%s", self.service_name, "SERVING" if serving else "NOT_SERVING")
        self.serving = serving

    async def _probe_forever(self) -> None:
        """The store probed every interval; two failed probes in a row make the replica NOT_SERVING. A
        probe that has not answered within its timeout has failed, and is not waited for: against a
        store that holds its connections open and silent (a stopped process, a frozen machine) the
        driver's cancellation can itself take tens of seconds. It runs on meanwhile, and the next
        probe is that same one, still pending, until it ends: one probe in flight at a time."""
        failures = 0
        pending: asyncio.Task[None] | None = None
        timeout = max(2.0, self.settings.health_probe_interval_s * 3)
        try:
            while not self._stop.is_set():
                ok, pending = await self._probe_once(pending, timeout)
                failures = 0 if ok else failures + 1
                # Two in a row: one slow probe (a store node restarting, a busy machine) is not an outage.
                if failures >= 2:
                    await self._set_health(False)
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=self.settings.health_probe_interval_s)
                except TimeoutError:
                    pass
        finally:
            if pending is not None:
                pending.cancel()

    async def _probe_once(
        self, pending: asyncio.Task[None] | None, within_s: float
    ) -> tuple[bool, asyncio.Task[None] | None]:
        """Waits up to `within_s` for the pending probe, or a new one; whether it answered, and the probe
        if it is still pending."""
        probe = pending or asyncio.create_task(self.backend.ensure_ready())
        done, _ = await asyncio.wait({probe}, timeout=within_s)
        err: BaseException | None
        if not done:
            err = TimeoutError(f"the store did not answer the health probe within {within_s:.1f}s")
        else:
            err = asyncio.CancelledError() if probe.cancelled() else probe.exception()
        if err is None:
            self._last_error = ""
            await self._set_health(True)
            return True, None
        if repr(err) != self._last_error:
            log.warning("store not ready service=%s error=%r", self.service_name, err)
            self._last_error = repr(err)
        return False, None if done else probe

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.max_concurrent_streams", s.max_streams_per_connection),
                # Envoy keeps upstream connections alive with pings; allow them every 60 s.
                ("grpc.http2.min_ping_interval_without_data_ms", 60_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # Read ahead at most 64 KiB per stream: a stream the service is not reading
                # (its store is slow) holds back its sender instead of filling this process.
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", 64 * 1024),
                # Calls that arrived but the service has not picked up yet (a burst of phones starting):
                # past the soft limit gRPC refuses a growing share of new calls with RST_STREAM (the
                # phone sees CANCELLED), past the hard one every new call. Refuse only beyond what the
                # replica takes at all.
                ("grpc.server.max_pending_requests", s.max_concurrent_rpcs),
                ("grpc.server.max_pending_requests_hard_limit", s.max_concurrent_rpcs),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
            interceptors=interceptors(),
        )
        self.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        add_reflection(server)
        address = f"{s.bind_host}:{self.port}"
        server.add_insecure_port(address)
        await self._set_health(False)
        await self.health.set(LIVENESS, SERVING)
        await server.start()
        if self.on_start is not None:
            self.on_start()
        if self.metrics_port is not None:
            metrics.initialize(descriptor_pool.Default().FindServiceByName(self.service_name))
            metrics.serve(s.bind_host, self.metrics_port)
        log.info(
            "listening service=%s address=%s metrics_port=%s", self.service_name, address, self.metrics_port or "-"
        )

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        probe = asyncio.create_task(self._probe_forever())
        await self._stop.wait()

        log.info("stopping service=%s: NOT_SERVING, draining for %.1fs", self.service_name, s.drain_delay_s)
        self.draining = True
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(s.drain_delay_s)
        if self.on_drain is not None:
            await self.on_drain()
        await server.stop(s.shutdown_grace_s)
        probe.cancel()
        await self.backend.close()
        tracing.shutdown()
        log.info("stopped service=%s", self.service_name)


@dataclass
class Parts:
    """What a service plugs into the shell: its database, its servicer, its drain step."""

    backend: Backend
    register: Callable[[grpc.aio.Server], None]
    on_drain: Callable[[], Awaitable[None]] | None = None
    # Background work begun once the server listens (on the event loop).
    on_start: Callable[[], None] | None = None
    # The largest message the service takes, when it needs more than GRPC_MAX_MESSAGE_BYTES (a file).
    max_receive_bytes: int | None = None


def main(
    prog: str,
    service_name: str,
    build: Callable[[Settings], Parts],
    gc_thresholds: tuple[int, int, int] = GC_THRESHOLDS,
) -> None:
    """The entry point of a replica process: `python -m <prog> --port N`."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Run one {prog} replica.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus text at /metrics on this port")
    args = parser.parse_args()
    logs.setup(f"{prog}:{args.port}")
    tracing.setup(prog, f"{prog}:{args.port}")

    async def serve() -> None:
        # Built inside the loop: the stores create asyncio primitives.
        settings = Settings.from_env()
        parts = build(settings)
        if parts.max_receive_bytes is not None:
            settings = dataclasses.replace(
                settings, max_message_bytes=max(settings.max_message_bytes, parts.max_receive_bytes)
            )
        await Replica(
            service_name=service_name,
            settings=settings,
            port=args.port,
            backend=parts.backend,
            register=parts.register,
            on_drain=parts.on_drain,
            on_start=parts.on_start,
            metrics_port=args.metrics_port,
            store=STORES.get(prog, ""),
        ).run()

    gc.set_threshold(*gc_thresholds)
    asyncio.run(serve())
