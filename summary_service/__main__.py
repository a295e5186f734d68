"""Runs one summary_service replica: python -m summary_service --port N."""

from runtrack.v1 import summary_pb2, summary_pb2_grpc
from runtrack_common import serving
from runtrack_common.config import Settings
from summary_service.activity_files import MAX_FILE_BYTES
from summary_service.analyser import Analyser
from summary_service.pg_store import PgRunStore
from summary_service.servicer import SummaryServicer, TrackingApi

SERVICE_NAME = summary_pb2.DESCRIPTOR.services_by_name["SummaryService"].full_name


def build(settings: Settings) -> serving.Parts:
    store = PgRunStore(settings)
    tracking = TrackingApi(settings.api_address, settings.api_timeout_s)
    analyser = Analyser(store, tracking)
    return serving.Parts(
        backend=store,
        register=lambda server: summary_pb2_grpc.add_SummaryServiceServicer_to_server(
            SummaryServicer(store, tracking, analyser), server
        ),
        on_drain=analyser.close,
        # ImportRun takes a whole file (activity_files.MAX_FILE_BYTES) with the message's framing.
        max_receive_bytes=MAX_FILE_BYTES + 64 * 1024,
    )


if __name__ == "__main__":
    serving.main("summary_service", SERVICE_NAME, build, serving.SHORT_CALLS_GC_THRESHOLDS)
