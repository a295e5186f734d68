"""The authorization matrix, on the real stack through Envoy over gRPC: every method of both services
(read from the descriptors: a method added without a row here fails the test) x every caller (the
owner for what only reads, another runner, this run's live link, another run's link, a revoked link,
no token) x every state of a run (in progress, stopped private, stopped public, deleted, never
existed). Each cell is the answer the contract documents; where a caller is refused nothing of the
owner's is written (their runs, trails, zones and links read the same before and after)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.api import annotations_pb2, httpbody_pb2
from google.protobuf import descriptor_pool, json_format
from google.protobuf.field_mask_pb2 import FieldMask

from devstack.activity_files import gpx_file, synthetic_run
from runtrack.v1 import summary_pb2, summary_pb2_grpc, tracking_pb2, tracking_pb2_grpc
from tests.helpers import point, token_channel
from tests.integration.faults import report
from tests.integration.test_dashboard import overview

OK = grpc.StatusCode.OK
NF = grpc.StatusCode.NOT_FOUND
PD = grpc.StatusCode.PERMISSION_DENIED
UA = grpc.StatusCode.UNAUTHENTICATED
STATES = ("in_progress", "private", "public", "deleted", "never")
CALLERS = ("owner", "stranger", "link", "other_link", "revoked_link", "nobody")
# Methods a link's token may call at all (Envoy's rules); every other method is refused there.
LINK_METHODS = {"GetRun", "WatchRun", "CheckLiveLink", "GetVisibleSummary", "CheckRunVisible"}
# The owner's cells cover what only reads: what changes a run is the owner's by the other tests.
OWNER_READS = {
    "GetTrackCursor",
    "GetTrack",
    "GetPrivacyZones",
    "WatchRun",
    "ListLiveLinks",
    "ExportTrack",
    "GetVisibleSummary",
    "GetRun",
    "ListRuns",
    "GetUserStats",
    "ListRecords",
    "CheckRunVisible",
}
START = dt.datetime(2026, 7, 1, 7, 0, tzinfo=dt.UTC)


def expected(method: str, caller: str, state: str) -> grpc.StatusCode:
    """The documented answer of one cell."""
    exists = state != "never"
    shared = state == "public"
    stopped = state in ("private", "public")
    if caller == "nobody":
        return UA
    if caller in ("link", "other_link", "revoked_link"):
        if method not in LINK_METHODS:
            return UA  # a link grants its run's summary and watch, nothing else
        if caller == "other_link":
            # LINK_OTHER_RUN; GetVisibleSummary looks the run up first, and a deleted run has no owner.
            return NF if (method == "GetVisibleSummary" and state == "deleted") else PD
        if method in ("WatchRun", "GetVisibleSummary") and state == "deleted":
            return NF  # the run is looked up before the link: it is gone
        if caller == "revoked_link" or state == "deleted":
            return UA  # revoked (a deleted run's links go with it)
        # CheckRunVisible: a link's run is visible to its holder from its first point (WatchRun asks).
        if method == "GetRun":
            return OK if stopped else NF  # no dashboard row until StopRun
        return OK
    if caller == "owner":
        if method in ("GetPrivacyZones", "ListRuns", "GetUserStats", "ListRecords"):
            return OK
        if method == "CheckLiveLink":
            return PD
        if state in ("deleted", "never"):
            return NF
        if method in ("GetRun", "CheckRunVisible"):
            return OK if stopped else NF
        return OK
    # Another runner.
    table: dict[str, Callable[[], grpc.StatusCode]] = {
        "RecordTrack": lambda: PD if exists else OK,  # RUN_ID_TAKEN; a new id is theirs
        "ClaimRun": lambda: PD if exists else OK,
        "StopRun": lambda: PD if exists else OK,
        "GetTrackCursor": lambda: NF,
        "GetTrack": lambda: OK if shared else NF,
        "ExportTrack": lambda: OK if shared else NF,
        "WatchRun": lambda: OK if shared else NF,
        "GetVisibleSummary": lambda: OK if shared else NF,
        "GetRun": lambda: OK if shared else NF,
        "CheckRunVisible": lambda: OK if shared else NF,
        "GetPrivacyZones": lambda: PD,  # another runner's zones: NOT_THE_CALLER
        "SetPrivacyZones": lambda: PD,
        "GetUserStats": lambda: PD,
        "ListRecords": lambda: PD,
        "ListRuns": lambda: OK,  # their PUBLIC runs only
        "CreateLiveLink": lambda: NF,
        "ListLiveLinks": lambda: NF,
        "DeleteLiveLink": lambda: NF,
        "MarkRunStopped": lambda: NF,
        "CheckLiveLink": lambda: PD,  # NOT_A_LIVE_LINK
        "UpdateRun": lambda: PD if shared else NF,
        "AnalyseRun": lambda: PD if shared else NF,
        "DeleteRun": lambda: PD if shared else NF,
        # A never-used id: their own tombstone (DeleteRun's claim), answered as nothing to delete.
        "DeleteTrack": lambda: NF if exists else OK,
        "ImportRun": lambda: OK,  # not a run's: the caller's own file becomes the caller's run
    }
    return table[method]()


def requests(run_id: str, owner: str) -> dict[str, Any]:
    """One request per method (a stream method: an iterator of its messages)."""
    return {
        "RecordTrack": lambda: iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(99)])]),
        "GetTrackCursor": lambda: tracking_pb2.GetTrackCursorRequest(run_id=run_id),
        "GetTrack": lambda: tracking_pb2.GetTrackRequest(run_id=run_id),
        "GetPrivacyZones": lambda: tracking_pb2.GetPrivacyZonesRequest(user_id=owner),
        "SetPrivacyZones": lambda: tracking_pb2.SetPrivacyZonesRequest(user_id=owner),
        "DeleteTrack": lambda: tracking_pb2.DeleteTrackRequest(run_id=run_id),
        "WatchRun": lambda: tracking_pb2.WatchRunRequest(run_id=run_id),
        "CreateLiveLink": lambda: tracking_pb2.CreateLiveLinkRequest(run_id=run_id),
        "ListLiveLinks": lambda: tracking_pb2.ListLiveLinksRequest(run_id=run_id),
        "DeleteLiveLink": lambda: tracking_pb2.DeleteLiveLinkRequest(run_id=run_id, link_id="none"),
        "CheckLiveLink": lambda: tracking_pb2.CheckLiveLinkRequest(run_id=run_id),
        "ExportTrack": lambda: tracking_pb2.ExportTrackRequest(run_id=run_id, format="gpx"),
        "MarkRunStopped": lambda: tracking_pb2.MarkRunStoppedRequest(run_id=run_id),
        "ClaimRun": lambda: tracking_pb2.ClaimRunRequest(run_id=run_id),
        "GetVisibleSummary": lambda: tracking_pb2.GetVisibleSummaryRequest(run_id=run_id),
        "StopRun": lambda: summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START)),
        "GetRun": lambda: summary_pb2.GetRunRequest(run_id=run_id),
        "ListRuns": lambda: summary_pb2.ListRunsRequest(user_id=owner),
        "GetUserStats": lambda: summary_pb2.GetUserStatsRequest(user_id=owner),
        "UpdateRun": lambda: summary_pb2.UpdateRunRequest(
            run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
            update_mask=FieldMask(paths=["visibility"]),
        ),
        "DeleteRun": lambda: summary_pb2.DeleteRunRequest(run_id=run_id),
        "ListRecords": lambda: summary_pb2.ListRecordsRequest(user_id=owner),
        "ImportRun": lambda: httpbody_pb2.HttpBody(content_type="application/gpx+xml", data=IMPORTED),
        "AnalyseRun": lambda: summary_pb2.AnalyseRunRequest(run_id=run_id, point_count=3),
        "CheckRunVisible": lambda: summary_pb2.CheckRunVisibleRequest(run_id=run_id),
    }


IMPORTED = gpx_file(synthetic_run(20, seed=41))


def methods() -> list[tuple[str, str, bool]]:
    """(service, method, server-streaming) of both services, from the descriptors."""
    pool = descriptor_pool.Default()
    out = []
    for name in ("runtrack.v1.TrackingService", "runtrack.v1.SummaryService"):
        service = pool.FindServiceByName(name)
        out += [(service.name, m.name, m.server_streaming) for m in service.methods]
    return out


async def call(channel: grpc.aio.Channel, service: str, method: str, streaming: bool, request: Any) -> grpc.StatusCode:
    stub = (
        tracking_pb2_grpc.TrackingServiceStub if service == "TrackingService" else summary_pb2_grpc.SummaryServiceStub
    )(channel)
    rpc = getattr(stub, method)
    try:
        if streaming:  # WatchRun: its first event (or its refusal) is the answer
            stream = rpc(request, timeout=10)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await rpc(request, timeout=15)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return OK


async def owners_view(channel: grpc.aio.Channel, runs: dict[str, str]) -> dict[str, Any]:
    """Everything of the owner's that a refused call must leave as it was."""
    tracking, summary = tracking_pb2_grpc.TrackingServiceStub(channel), summary_pb2_grpc.SummaryServiceStub(channel)
    view: dict[str, Any] = {"zones": await tracking.GetPrivacyZones(tracking_pb2.GetPrivacyZonesRequest())}
    listed = await summary.ListRuns(summary_pb2.ListRunsRequest(page_size=100))
    view["runs"] = sorted((r.run_id, r.visibility, r.name, r.overview.SerializeToString()) for r in listed.runs)
    for state, run_id in runs.items():
        if state in ("deleted", "never"):
            continue
        cursor = await tracking.GetTrackCursor(tracking_pb2.GetTrackCursorRequest(run_id=run_id))
        links = await tracking.ListLiveLinks(tracking_pb2.ListLiveLinksRequest(run_id=run_id))
        view[state] = (cursor.point_count, cursor.max_seq, sorted(link.link_id for link in links.links))
    return view


def caller_token(
    caller: str, state: str, owner: str, stranger: str, links: dict[str, str], revoked: dict[str, str]
) -> str | None:
    """The token each caller of the matrix calls with (None: no token)."""
    return {
        "owner": owner,
        "stranger": stranger,
        "link": links.get(state),
        "revoked_link": revoked.get(state),
        "other_link": links["in_progress" if state != "in_progress" else "private"],
        "nobody": None,
    }[caller]


async def make_runs(stack, owner: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The owner's runs in each state; for each, a link, a revoked link, and another run's link."""
    runs = {s: str(uuid.uuid4()) for s in STATES}
    links, revoked = {}, {}
    async with token_channel(stack.envoy_address, stack.issuer.token(owner)) as ch:
        tracking, summary = tracking_pb2_grpc.TrackingServiceStub(ch), summary_pb2_grpc.SummaryServiceStub(ch)
        for state in ("in_progress", "private", "public", "deleted"):
            run_id = runs[state]
            await tracking.RecordTrack(
                iter([tracking_pb2.RecordTrackRequest(run_id=run_id, points=[point(s) for s in (1, 2, 3)])])
            )
            links[state] = (await tracking.CreateLiveLink(tracking_pb2.CreateLiveLinkRequest(run_id=run_id))).token
            gone = await tracking.CreateLiveLink(tracking_pb2.CreateLiveLinkRequest(run_id=run_id))
            await tracking.DeleteLiveLink(tracking_pb2.DeleteLiveLinkRequest(run_id=run_id, link_id=gone.link_id))
            revoked[state] = gone.token
            if state != "in_progress":
                await summary.StopRun(summary_pb2.StopRunRequest(run_id=run_id, overview=overview(START)))
            if state == "public":
                await summary.UpdateRun(
                    summary_pb2.UpdateRunRequest(
                        run=summary_pb2.Run(run_id=run_id, visibility=summary_pb2.PUBLIC),
                        update_mask=FieldMask(paths=["visibility"]),
                    )
                )
            if state == "deleted":
                await summary.DeleteRun(summary_pb2.DeleteRunRequest(run_id=run_id))
    return runs, links, revoked


async def test_every_method_caller_and_state_gets_its_documented_answer_and_refusals_write_nothing(stack):
    owner = f"matrix-owner-{uuid.uuid4().hex[:6]}"
    stranger = stack.issuer.token(f"matrix-stranger-{uuid.uuid4().hex[:6]}")
    runs, links, revoked = await make_runs(stack, owner)
    listed = methods()
    assert {m for _, m, _ in listed} == set(requests("", "")), "a method without a row in the matrix"
    cells: dict[tuple[str, str, str], tuple[grpc.StatusCode, grpc.StatusCode]] = {}
    async with token_channel(stack.envoy_address, stack.issuer.token(owner)) as mine:
        before = await owners_view(mine, runs)
        for caller in CALLERS:
            for state in STATES:
                for service, method, streaming in listed:
                    if caller == "owner" and method not in OWNER_READS:
                        continue
                    if caller in ("link", "revoked_link", "other_link") and state == "never":
                        continue  # no link exists for an id never used
                    # A never-used id is fresh in every cell: a stranger's claim of it is their own.
                    run_id = str(uuid.uuid4()) if state == "never" else runs[state]
                    token = caller_token(caller, state, stack.issuer.token(owner), stranger, links, revoked)
                    request = requests(run_id, owner)[method]()
                    if token is None:
                        async with grpc.aio.insecure_channel(stack.envoy_address) as ch:
                            got = await call(ch, service, method, streaming, request)
                    else:
                        async with token_channel(stack.envoy_address, token) as ch:
                            got = await call(ch, service, method, streaming, request)
                    cells[(method, caller, state)] = (got, expected(method, caller, state))
        after = await owners_view(mine, runs)
    wrong = {f"{m} {c} {s}": f"got {g.name}, documented {e.name}" for (m, c, s), (g, e) in cells.items() if g != e}
    assert not wrong, wrong
    assert after == before, "a refused call changed the owner's runs, trails, zones or links"
    report(
        stack, "authorization_matrix", cells=len(cells), methods=len(listed), callers=len(CALLERS), states=len(STATES)
    )
    await asyncio.sleep(0)


@pytest.mark.parametrize("caller", CALLERS)
def test_the_matrix_documents_every_cell(caller):
    """Pure: every method x state has an answer for every caller (no KeyError, no gap)."""
    for _, method, _ in methods():
        for state in STATES:
            assert expected(method, caller, state) in (OK, NF, PD, UA)


# ---- the same matrix over JSON (Envoy's transcoder), for every method with an HTTP binding ----------

HTTP_STATUS = {OK: 200, NF: 404, PD: 403, UA: 401}


def http_bindings() -> dict[str, tuple[str, str, str]]:
    """method -> (HTTP verb, path template, body) from the descriptors' google.api.http rules."""
    pool = descriptor_pool.Default()
    out = {}
    for name in ("runtrack.v1.TrackingService", "runtrack.v1.SummaryService"):
        for m in pool.FindServiceByName(name).methods:
            options = m.GetOptions()
            if options.HasExtension(annotations_pb2.http):
                rule = options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                out[m.name] = (verb.upper(), getattr(rule, verb), rule.body)
    return out


def http_request(method: str, binding: tuple[str, str, str], request: Any) -> tuple[str, str, bytes | None, str]:
    """(verb, path with its query, body, content type) of `request` sent as the binding says."""
    verb, template, body_field = binding
    if isinstance(request, httpbody_pb2.HttpBody):
        return verb, template, request.data, request.content_type
    fields = json_format.MessageToDict(request, preserving_proto_field_name=True)

    def value(path: str) -> str:
        v: Any = fields
        for part in path.split("."):
            v = v.get(part, "") if isinstance(v, dict) else ""
        return urllib.parse.quote(str(v), safe="")

    path = re.sub(r"\{([a-z_.]+)\}", lambda m: value(m.group(1)), template)
    in_path = {m.split(".")[0] for m in re.findall(r"\{([a-z_.]+)\}", template)}
    if body_field == "*":
        return verb, path, json.dumps(fields).encode(), "application/json"
    if body_field:
        rest = {k: v for k, v in fields.items() if k != body_field and k not in in_path}
        query = urllib.parse.urlencode(rest)  # a field mask is already its comma-joined string
        data = json.dumps(fields.get(body_field, {})).encode()
        return verb, f"{path}?{query}" if query else path, data, "application/json"
    rest = {k: v for k, v in fields.items() if k not in in_path and not isinstance(v, dict)}
    query = urllib.parse.urlencode(rest)
    return verb, f"{path}?{query}" if query else path, None, "application/json"


def http_call(base: str, verb: str, path: str, data: bytes | None, content_type: str, token: str | None) -> int:
    headers = {"content-type": content_type}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{base}{path}", data=data, method=verb, headers=headers)
    try:
        # A watch answers 200 with its first event and goes on: the status is the answer.
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code


async def test_over_json_every_method_caller_and_state_gets_its_documented_answer_and_refusals_write_nothing(stack):
    owner = f"matrix-json-{uuid.uuid4().hex[:6]}"
    stranger = stack.issuer.token(f"matrix-json-stranger-{uuid.uuid4().hex[:6]}")
    runs, links, revoked = await make_runs(stack, owner)
    bindings = http_bindings()
    assert set(bindings) <= set(requests("", "")), "a method without a row in the matrix"
    cells: dict[tuple[str, str, str], tuple[int, int]] = {}
    async with token_channel(stack.envoy_address, stack.issuer.token(owner)) as mine:
        before = await owners_view(mine, runs)
        for caller in CALLERS:
            for state in STATES:
                for method, binding in bindings.items():
                    if caller == "owner" and method not in OWNER_READS:
                        continue
                    if caller in ("link", "revoked_link", "other_link") and state == "never":
                        continue
                    run_id = str(uuid.uuid4()) if state == "never" else runs[state]
                    token = caller_token(caller, state, stack.issuer.token(owner), stranger, links, revoked)
                    verb, path, data, content_type = http_request(method, binding, requests(run_id, owner)[method]())
                    got = await asyncio.to_thread(http_call, stack.envoy_address, verb, path, data, content_type, token)
                    cells[(method, caller, state)] = (got, HTTP_STATUS[expected(method, caller, state)])
        after = await owners_view(mine, runs)
    wrong = {f"{m} {c} {s}": f"got {g}, documented {e}" for (m, c, s), (g, e) in cells.items() if g != e}
    assert not wrong, wrong
    assert after == before, "a refused call changed the owner's runs, trails, zones or links"
    report(stack, "authorization_matrix_json", cells=len(cells), methods=len(bindings))
