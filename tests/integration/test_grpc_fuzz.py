"""The gRPC path fuzzed through Envoy, as the JSON path is: random messages built from the descriptors,
the same messages with their wire bytes mutated, and arbitrary bytes, sent to every unary method and
to RecordTrack with a valid token. Every answer is OK or a documented status carrying ErrorInfo; no
INTERNAL, UNKNOWN or UNAVAILABLE; every replica still SERVING afterwards."""

import uuid

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.auth import token_channel
from runtrack.v1 import summary_pb2, tracking_pb2

SERVICES = [
    tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"],
    summary_pb2.DESCRIPTOR.services_by_name["SummaryService"],
]
UNARY = [m for s in SERVICES for m in s.methods if not m.client_streaming and not m.server_streaming]
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SCALARS = {
    d.FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    d.FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    d.FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    d.FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    d.FieldDescriptor.TYPE_BOOL: st.booleans(),
    d.FieldDescriptor.TYPE_STRING: st.one_of(
        st.text(max_size=40), st.builds(lambda: str(uuid.uuid4())), st.sampled_from(["me", "", "runner-x"])
    ),
    d.FieldDescriptor.TYPE_BYTES: st.binary(max_size=200),
}


def message(desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A random message of this type: each field left out or given a value of its type."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(desc)

    def value(field: d.FieldDescriptor) -> st.SearchStrategy:
        if field.type == d.FieldDescriptor.TYPE_MESSAGE:
            return message(field.message_type, depth + 1) if depth < 3 else st.just(None)
        if field.type == d.FieldDescriptor.TYPE_ENUM:
            return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 50))
        return SCALARS.get(field.type, st.just(None))

    def build(values: dict[str, object]) -> Message:
        out = cls()
        for name, v in values.items():
            field = desc.fields_by_name[name]
            if v is None:
                continue
            try:
                if field.is_repeated:
                    target = getattr(out, name)
                    for item in v:  # type: ignore[attr-defined]
                        if item is None:
                            continue
                        if field.type == d.FieldDescriptor.TYPE_MESSAGE:
                            target.add().CopyFrom(item)
                        else:
                            target.append(item)
                elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
                    getattr(out, name).CopyFrom(v)
                else:
                    setattr(out, name, v)
            except (ValueError, TypeError):
                pass  # a value the type cannot hold (a closed enum, say): left out
        return out

    fields = {f.name: (st.lists(value(f), max_size=3) if f.is_repeated else value(f)) for f in desc.fields}
    return st.fixed_dictionaries({}, optional=fields).map(build)


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    if not data:
        return st.binary(max_size=64)
    at = st.integers(0, len(data) - 1)
    return st.one_of(
        at.map(lambda i: data[:i]),
        st.tuples(at, st.integers(0, 255)).map(lambda t: data[: t[0]] + bytes([t[1]]) + data[t[0] + 1 :]),
        st.tuples(at, st.binary(min_size=1, max_size=8)).map(lambda t: data[: t[0]] + t[1] + data[t[0] :]),
    )


def payloads(desc: d.Descriptor) -> st.SearchStrategy[bytes]:
    wire = message(desc).map(lambda m: m.SerializeToString())
    return st.one_of(wire, wire.flatmap(mutated), st.binary(max_size=300))


def path(method: d.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def check_answer(name: str, err: grpc.aio.AioRpcError | None) -> None:
    if err is None:
        return
    assert err.code() in DOCUMENTED, f"{name}: {err.code().name} {err.details()}"
    status = rpc_status.from_call(err)
    assert status is not None, f"{name}: {err.code().name} without google.rpc.Status details: {err.details()}"
    info = error_details_pb2.ErrorInfo()
    assert any(x.Unpack(info) for x in status.details), f"{name}: no ErrorInfo ({err.details()})"


@pytest.fixture(scope="module")
def fuzz_token(stack):
    return stack.issuer.token(f"fuzz-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("method", UNARY, ids=[m.name for m in UNARY])
def test_a_unary_method_answers_any_message_with_a_documented_status(stack, fuzz_token, method):
    import asyncio

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payloads(method.input_type))
    def one(data: bytes) -> None:
        async def call() -> None:
            async with token_channel(stack.envoy_address, fuzz_token) as channel:
                rpc = channel.unary_unary(path(method), request_serializer=None, response_deserializer=None)
                try:
                    await rpc(data, timeout=10)
                except grpc.aio.AioRpcError as err:
                    check_answer(method.name, err)

        asyncio.run(call())

    one()


def test_record_track_answers_any_stream_of_messages_with_a_documented_status(stack, fuzz_token):
    import asyncio

    request = tracking_pb2.DESCRIPTOR.message_types_by_name["RecordTrackRequest"]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(payloads(request), min_size=1, max_size=3))
    def one(messages: list[bytes]) -> None:
        async def call() -> None:
            async with token_channel(stack.envoy_address, fuzz_token) as channel:
                rpc = channel.stream_unary(
                    "/runtrack.v1.TrackingService/RecordTrack", request_serializer=None, response_deserializer=None
                )
                try:
                    await rpc(iter(messages), timeout=10)
                except grpc.aio.AioRpcError as err:
                    check_answer("RecordTrack", err)

        asyncio.run(call())

    one()


async def test_every_replica_is_serving_after_the_fuzzing(stack):
    for svc, ports in stack.replica_ports().items():
        for port in ports:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, f"{svc} on {port}"
