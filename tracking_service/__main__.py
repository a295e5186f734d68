"""Runs one tracking_service replica: python -m tracking_service --port N."""

from runtrack.v1 import tracking_pb2, tracking_pb2_grpc
from runtrack_common import serving
from runtrack_common.config import Settings
from tracking_service.cql_live import CqlLiveStore, CqlOutbox
from tracking_service.cql_session import CqlSession
from tracking_service.cql_store import CqlTrackStore
from tracking_service.hub import LiveHub
from tracking_service.servicer import TrackingServicer
from tracking_service.summary_api import SummaryApi
from tracking_service.webhooks import Webhooks

SERVICE_NAME = tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"].full_name


def build(settings: Settings) -> serving.Parts:
    cql = CqlSession(settings)
    store = CqlTrackStore(cql)
    webhooks = Webhooks(settings, CqlOutbox(cql))
    hub = LiveHub(store, CqlLiveStore(cql), settings, webhooks)
    servicer = TrackingServicer(store, settings, SummaryApi(settings.api_address, settings.api_timeout_s), hub)
    return serving.Parts(
        backend=store,
        register=lambda server: tracking_pb2_grpc.add_TrackingServiceServicer_to_server(servicer, server),
        on_drain=servicer.drain,
        on_start=webhooks.start,
    )


if __name__ == "__main__":
    serving.main("tracking_service", SERVICE_NAME, build)
