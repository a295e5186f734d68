"""The one error model: domain errors, their google.rpc.Status, how stores' errors are classified,
and what the reference client retries."""

import cassandra
import grpc
import psycopg
import pytest
from cassandra.cluster import NoHostAvailable
from cassandra.protocol import ErrorMessage
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from psycopg_pool import PoolTimeout

from runtrack.v1 import tracking_pb2
from runtrack_client import retry_delay
from runtrack_common import status
from runtrack_common.errors import (
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    RunTrackError,
    Unavailable,
    Violations,
)
from runtrack_common.serving import file_containing_symbol
from summary_service import pg_store
from summary_service.domain import Overview, validate_overview
from tracking_service import cql_session


def details(s):
    out = {}
    for any_detail in s.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            msg = kind()
            if any_detail.Unpack(msg):
                out[kind.__name__] = msg
    return out


def test_every_error_carries_error_info_in_the_runtrack_domain():
    s = status.to_status(NotFound("run_id: no run x", metadata={"run_id": "x"}))
    d = details(s)
    assert s.code == grpc.StatusCode.NOT_FOUND.value[0] and s.message == "run_id: no run x"
    assert (d["ErrorInfo"].reason, d["ErrorInfo"].domain, dict(d["ErrorInfo"].metadata)) == (
        "RUN_NOT_FOUND",
        "runtrack",
        {"run_id": "x"},
    )
    assert set(d) == {"ErrorInfo"}


def test_invalid_argument_lists_one_field_violation_per_broken_rule():
    err = InvalidArgument.of([FieldViolation("overview.distance_m", "must be >= 0"), FieldViolation("run_id", "bad")])
    d = details(status.to_status(err))
    assert [(v.field, v.description) for v in d["BadRequest"].field_violations] == [
        ("overview.distance_m", "must be >= 0"),
        ("run_id", "bad"),
    ]
    assert err.message == "overview.distance_m: must be >= 0; run_id: bad"
    assert "RetryInfo" not in d


def test_unavailable_carries_retry_info_with_its_delay():
    d = details(status.to_status(Unavailable("CQL store unavailable", retry_after_s=1.5)))
    assert d["RetryInfo"].retry_delay.ToMilliseconds() == 1500
    assert d["ErrorInfo"].reason == "STORE_UNAVAILABLE"


def test_internal_is_never_retryable_and_a_bug_is_internal():
    assert status.code_of(Internal("rejected")) == grpc.StatusCode.INTERNAL
    s = status.to_status(status.unexpected("r-1"))
    assert s.code == grpc.StatusCode.INTERNAL.value[0]
    assert "RetryInfo" not in details(s) and details(s)["ErrorInfo"].reason == "INTERNAL_ERROR"


def test_violations_collects_every_rule_before_raising():
    found = Violations()
    assert found.check(lambda: 42) == 42
    assert found.check(lambda: (_ for _ in ()).throw(InvalidArgument("run_id", "is required"))) is None
    found.add("user_id", "is required")
    with pytest.raises(InvalidArgument) as err:
        found.raise_if_any()
    assert [v.field for v in err.value.violations] == ["run_id", "user_id"]


def test_an_overview_breaking_three_rules_names_all_three():
    bad = Overview(
        start_us=0,
        end_us=60_000_000,
        distance_m=-1.0,
        moving_time_us=-5,
        elevation_gain_m=float("nan"),
        point_count=1,
        avg_heart_rate_bpm=None,
        polyline="",
    )
    with pytest.raises(InvalidArgument) as err:
        validate_overview(bad)
    assert [v.field for v in err.value.violations] == [
        "overview.distance_m",
        "overview.moving_time",
        "overview.elevation_gain_m",
    ]


@pytest.mark.parametrize(
    "error, retryable",
    [
        (NoHostAvailable("down", {}), True),
        (cassandra.OperationTimedOut("slow"), True),
        (
            cassandra.WriteTimeout("timeout", consistency=1, required_responses=1, received_responses=0, write_type=0),
            True,
        ),
        (cassandra.InvalidRequest("unconfigured table track_points"), False),
        (cassandra.Unauthorized("no"), False),
        (cassandra.AuthenticationFailed("bad password"), False),
        (
            cassandra.WriteFailure(
                "failed", consistency=1, required_responses=1, received_responses=0, failures=1, write_type=0
            ),
            False,
        ),
        (OSError("connection refused"), True),
        (
            ErrorMessage(0x1700, "CAS operation result is unknown - proposal accepted by 1 but not a quorum.", None),
            True,
        ),
        (ErrorMessage(0x2200, "Invalid query", None), False),
    ],
)
def test_cql_errors_are_unavailable_only_when_a_retry_can_fix_them(error, retryable):
    classified = cql_session.classify(error)
    assert isinstance(classified, Unavailable if retryable else Internal)
    assert classified.metadata["store"] == "cql"


@pytest.mark.parametrize(
    "error, retryable",
    [
        (PoolTimeout("no connection"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.QueryCanceled("statement timeout"), True),
        (psycopg.errors.AdminShutdown("terminating"), True),
        (psycopg.errors.SerializationFailure("retry"), True),
        # A primary demoted in a failover: the next connection finds the new one.
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), True),
        (psycopg.errors.UndefinedTable("no such table"), False),
        (psycopg.errors.SyntaxError("syntax"), False),
        (psycopg.errors.InsufficientPrivilege("denied"), False),
        (psycopg.errors.NumericValueOutOfRange("too big"), False),
    ],
)
def test_postgresql_errors_are_unavailable_only_when_a_retry_can_fix_them(error, retryable):
    classified = pg_store.classify(error)
    assert isinstance(classified, Unavailable if retryable else Internal)


def rpc_error(code, err: RunTrackError | None = None, message="boom"):
    trailing = grpc.aio.Metadata()
    if err is not None:
        s = status.to_status(err)
        message = s.message
        trailing.add("grpc-status-details-bin", s.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def test_the_client_retries_unavailable_no_sooner_than_retry_info_says():
    assert retry_delay(rpc_error(grpc.StatusCode.UNAVAILABLE, Unavailable("down", retry_after_s=2.0))) == 2.0
    assert retry_delay(rpc_error(grpc.StatusCode.UNAVAILABLE)) == 0.0


def test_the_client_never_retries_a_server_verdict():
    assert retry_delay(rpc_error(grpc.StatusCode.INTERNAL, Internal("rejected"))) is None
    assert retry_delay(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument("run_id", "bad"))) is None
    assert retry_delay(rpc_error(grpc.StatusCode.NOT_FOUND, NotFound("no run"))) is None


def test_the_client_retries_a_transport_reset_that_no_server_explained():
    assert retry_delay(rpc_error(grpc.StatusCode.INTERNAL, message="Received RST_STREAM with error code 2")) == 0.0


def test_reflection_finds_the_file_of_methods_and_fields_too():
    pool = descriptor_pool.Default()
    tracking_file = tracking_pb2.DESCRIPTOR.name
    for symbol in [
        "runtrack.v1.TrackingService",
        "runtrack.v1.TrackingService.RecordTrack",
        "runtrack.v1.TrackPoint",
        "runtrack.v1.TrackPoint.heart_rate_bpm",
    ]:
        assert file_containing_symbol(pool, symbol).name == tracking_file
    for unknown in ["runtrack.v1.TrackingService.Nope", "runtrack.v1.TrackPoint.nope", "nope", "a.b.c"]:
        with pytest.raises(KeyError):
            file_containing_symbol(pool, unknown)
