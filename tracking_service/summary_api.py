"""The tracking service's calls to the summary service's public API, through Envoy, as the caller."""

from __future__ import annotations

import uuid

from runtrack.v1 import summary_pb2, summary_pb2_grpc
from runtrack_common.api import PublicApi
from runtrack_common.errors import NotFound
from runtrack_common.identity import Caller, LinkHolder
from tracking_service.tracks import Grant


class SummaryApi(PublicApi):
    """RunVisibility through the dashboard's CheckRunVisible, as the caller: decided from the run's
    row (the owner of record's) and its visibility, without asking anything back of this service."""

    async def trail_grew(self, run_id: uuid.UUID, point_count: int, caller: Caller) -> None:
        stub = summary_pb2_grpc.SummaryServiceStub(self.channel)
        await self.call(
            stub.AnalyseRun, summary_pb2.AnalyseRunRequest(run_id=str(run_id), point_count=point_count), caller
        )

    async def visible(self, run_id: uuid.UUID, caller: Caller | LinkHolder) -> Grant | None:
        stub = summary_pb2_grpc.SummaryServiceStub(self.channel)
        try:
            grant = await self.call(
                stub.CheckRunVisible, summary_pb2.CheckRunVisibleRequest(run_id=str(run_id)), caller
            )
        except NotFound:
            return None
        return Grant(share_health=grant.owner or grant.share_health)
