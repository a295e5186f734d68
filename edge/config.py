"""One typed description of Envoy in front of RunTrack: listener, routes, clusters.

`render(layout)` turns it into Envoy's v3 bootstrap. Two targets share it; only discovery and a few
paths differ:

- production on Kubernetes (`render_k8s`, written by `scripts/gen-envoy` to envoy/envoy.yaml, which
  the chart deploys): each service's replicas are what its headless Service's DNS name resolves to,
  i.e. its ready pods. The chart replaces the placeholders (`NAMESPACE`, `JWT_ISSUER`...) with the
  release's values when it loads the file;
- the local stacks (a `Layout` with their ports, keys and token issuer, rendered at start and not
  committed): replica addresses live in file-based EDS documents (`eds_document`) that `scripts/dev`
  rewrites as replicas come and go.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from runtrack.v1 import summary_pb2, tracking_pb2

# The per-runner limits Envoy enforces (the chart's `limits` values default to these).
LIMITS_YAML = Path(__file__).with_name("limits.yaml")

TRACKING = tracking_pb2.DESCRIPTOR.services_by_name["TrackingService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
SUMMARY = summary_pb2.DESCRIPTOR.services_by_name["SummaryService"]
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
# The verified caller, as Envoy hands it to the replicas; for a live link, its run and its id.
CALLER_HEADER = "x-runtrack-user"
LINK_RUN_HEADER = "x-runtrack-link-run"
LINK_ID_HEADER = "x-runtrack-link"
LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
COMPRESSOR_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
LOCAL_RATELIMIT = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
# The streams a phone or a spectator opens (gRPC paths; WatchRun also by its JSON path).
# Envoy matches a regex against the whole :path (its query string included).
STREAM_PATHS = r"^/runtrack\.v1\.TrackingService/(RecordTrack|WatchRun)$|^/v1/runs/[^/]+:watch(\?.*)?"
# Files in and out (ImportRun, ExportTrack), gRPC or JSON: the heaviest calls, a family of their own.
FILE_PATHS = r"^/runtrack\.v1\.\w+/(ImportRun|ExportTrack)$|^/v1/runs(:import|/[^/]+/track\.).*"
# Every other call of a runner counts as one of its `calls`.
FAMILY_PATHS = {"stream_opens": STREAM_PATHS, "files": FILE_PATHS}
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Unary calls are safe to repeat (StopRun is idempotent by contract): retry them on another replica.
RETRY_ON = "unavailable,reset,connect-failure,refused-stream"
PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
DNS_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"
CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
TRACES_CLUSTER = "traces"


@dataclass(frozen=True)
class Cluster:
    """A pool of replicas of one service, health-checked with grpc.health.v1."""

    name: str
    health_service: str
    # Streams last a whole run: balance on open requests, not on arrivals.
    lb_policy: str = "LEAST_REQUEST"


@dataclass(frozen=True)
class Route:
    """Requests whose path starts with `prefix` go to `cluster`."""

    prefix: str
    cluster: str
    # 0 disables the per-request timeout (a client stream lasts a whole run).
    timeout_s: int = 15
    # Bounds a long stream when timeout_s is 0.
    max_stream_s: int | None = None
    retries: int = 0
    # Off for a stream of events: gzip would hold small messages back.
    compress: bool = True
    # Streams open at once are limited (when the limits are on) per "runner" or per live "link":
    # Envoy sends the limit in a header and all of a runner's (a link's) streams to one replica,
    # which counts them (tracking_service/open_limits.py).
    open_per: str | None = None


@dataclass(frozen=True)
class StaticFile:
    """A file Envoy itself serves at `path` (the web page, the OpenAPI document): read when Envoy
    loads its configuration, so a rebuilt page is served after Envoy restarts."""

    path: str
    file: str
    content_type: str


def static_files(web_dist: str, generated: str) -> tuple[StaticFile, ...]:
    """The page as built in `web_dist` and the OpenAPI document in `generated`."""
    html = "text/html; charset=utf-8"
    return (
        StaticFile("/", f"{web_dist}/index.html", html),
        StaticFile("/index.html", f"{web_dist}/index.html", html),
        StaticFile("/assets/app.js", f"{web_dist}/assets/app.js", "application/javascript; charset=utf-8"),
        StaticFile("/assets/app.css", f"{web_dist}/assets/app.css", "text/css; charset=utf-8"),
        StaticFile("/openapi.json", f"{generated}/openapi.json", "application/json"),
    )


# Relative to the repository root, Envoy's working directory in the local stack.
STATIC_FILES = static_files("web/dist", "generated")
DESCRIPTOR_SET_NAME = "runtrack_descriptor.pb"
TRANSCODED_REQUEST_MAX_BYTES = 16 * 1024 * 1024 + 64 * 1024
TRANSCODED_RESPONSE_MAX_BYTES = 16 * 1024 * 1024
# Envoy keeps a direct response's body in memory; the page's bundle is a few hundred KB.
MAX_STATIC_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class LocalReply:
    """An error Envoy answers itself, with the same `google.rpc.Status` details as the replicas'
    errors, so that a client reads one model. `when` is an access-log filter on the reply."""

    when: dict[str, Any]
    code: int
    reason: str
    message: str
    retry_after_s: float | None = None
    # The HTTP status to answer instead of Envoy's own.
    http_status: int | None = None
    # For the JSON API: the message is Envoy's own text (it says which check failed).
    json_message: str | None = None
    # Whether gRPC calls get it too (as trailers-only), or only JSON calls.
    grpc: bool = True
    # ErrorInfo's metadata.
    metadata: tuple[tuple[str, str], ...] = ()

    def status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code, message=self.message)
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain="runtrack", metadata=dict(self.metadata))
        status.details.add().Pack(info)
        if self.retry_after_s is not None:
            delay = Duration()
            delay.FromTimedelta(dt.timedelta(seconds=self.retry_after_s))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status


def _flags(*flags: str) -> dict[str, Any]:
    return {"response_flag_filter": {"flags": list(flags)}}


def _http_status(code: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": code, "runtime_key": f"runtrack.local_reply.status_{code}"},
            }
        }
    }


def _family_match(family: str) -> list[dict[str, Any]]:
    """Header matchers on :path, all to match, for the calls of one family (edge/limits.yaml)."""

    def path(regex: str, invert: bool) -> dict[str, Any]:
        return {"name": ":path", "string_match": {"safe_regex": {"regex": regex}}, "invert_match": invert}

    if family in FAMILY_PATHS:
        return [path(FAMILY_PATHS[family], False)]
    return [path(regex, True) for regex in FAMILY_PATHS.values()]


def _rate_limited(family: str, what: str) -> LocalReply:
    """A runner over one of its limits (edge/limits.yaml), told which and when to come back."""
    return LocalReply(
        {
            "and_filter": {
                "filters": [_http_status(429), *({"header_filter": {"header": m}} for m in _family_match(family))]
            }
        },
        code_pb2.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        f"too many {what} from this runner; slow down and retry after the delay given",
        1.0,
        metadata=(("limit", family),),  # one entry: a map's order is not fixed
    )


LOCAL_REPLIES = (
    # A runner over its calls per second, or its stream opens per second.
    _rate_limited("calls", "calls"),
    _rate_limited("stream_opens", "streams opened"),
    _rate_limited("files", "files imported or exported"),
    # Every replica of the service reports NOT_SERVING (its store is down) or none is running.
    LocalReply(_flags("UH"), code_pb2.UNAVAILABLE, "NO_HEALTHY_REPLICA", "no healthy replica; retry shortly", 1.0),
    # A replica went away between the health check and the call, or too many calls are open, or it
    # reset the stream before answering (UR: a stream route has no retries to hide it).
    LocalReply(
        _flags("UF", "UC", "UR", "URX", "UO", "UT"),
        code_pb2.UNAVAILABLE,
        "REPLICA_UNREACHABLE",
        "no replica could take the call; retry",
        0.5,
    ),
    # jwt_authn refused the token: missing, malformed, bad signature, unknown key, wrong issuer,
    # expired (401), or an audience without "runtrack" (403, answered as 401 like the others).
    *(
        LocalReply(
            _http_status(status),
            code_pb2.UNAUTHENTICATED,
            "INVALID_TOKEN",
            "a valid token is required: authorization: Bearer <JWT>",
            http_status=401,
            json_message="%LOCAL_REPLY_BODY%",
        )
        for status in (401, 403)
    ),
    # The transcoder could not read a JSON call as its method's request (a malformed body, a value
    # of the wrong type, an unknown query parameter; Envoy's words name the field), or Envoy refused
    # the path itself or a header (a gRPC call with a header name that is not a metadata key).
    LocalReply(
        _http_status(400),
        code_pb2.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        "the request is not valid for this method (its path or a header)",
        json_message="the request is not valid for this method: %LOCAL_REPLY_BODY%",
    ),
    # A JSON body over its limit (JSON_REQUEST_MAX_BYTES, IMPORT_REQUEST_MAX_BYTES), or over what Envoy
    # buffers for a filter that reads the whole body: too large for the method, not to be resent as is.
    LocalReply(
        _http_status(413),
        code_pb2.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        "the request body is larger than this method takes",
        json_message="the request body is too large: %LOCAL_REPLY_BODY%",
        grpc=False,
    ),
    # No method answers this path and verb.
    LocalReply(
        _http_status(404),
        code_pb2.NOT_FOUND,
        "NO_SUCH_METHOD",
        "no method of the API answers this path and verb",
        grpc=False,
    ),
)


@dataclass(frozen=True)
class RemoteJwks:
    """The identity provider's JWKS, fetched over HTTPS by Envoy and cached, instead of a file."""

    url: str
    # The provider's host and port, for the cluster Envoy fetches through (and the TLS SNI).
    host: str
    port: int | str
    # The CA bundle that verifies the provider's certificate.
    ca_file: str
    cache_duration_s: int = 300
    cluster: str = "jwks"


@dataclass(frozen=True)
class Auth:
    """Tokens checked at the edge: who signs them, for whom, and where Envoy finds the keys."""

    issuer: str
    audience: str
    # A JWKS file, relative to Envoy's working directory (unless `remote_jwks` is set).
    jwks_file: str = ".dev/keys/jwks.json"
    remote_jwks: RemoteJwks | None = None
    clock_skew_s: int = 30
    # Live links (their own issuer and key): accepted on WatchRun and GetRun only. None: no links.
    link_jwks_file: str | None = None
    link_issuer: str = "https://live.runtrack.local"
    link_audience: str = "runtrack-live"
    # Open without a token: health, reflection, the web page and the API description.
    open_prefixes: tuple[str, ...] = (f"/{HEALTH.full_name}/", "/grpc.reflection.", "/assets/")
    open_paths: tuple[str, ...] = ("/", "/index.html", "/openapi.json", "/favicon.ico")


@dataclass(frozen=True)
class DnsDiscovery:
    """Replicas found by DNS: every address `name_pattern` (with `{cluster}` replaced by the
    cluster's name) resolves to is a replica on `port`. A Kubernetes headless Service's name
    resolves to its ready pods, so a pod joins once its readiness probe passes."""

    name_pattern: str
    port: int
    # Asked again every second (not after the record's TTL): a new pod is found within a second of
    # the DNS server knowing it. A pod leaving stays until its health check fails (it reports
    # NOT_SERVING on SIGTERM), as with EDS.
    refresh_s: int = 1


# TLS at the edge: 1.2 and 1.3 only; for 1.2 forward-secret AEAD suites only (1.3's are all AEAD).
TLS_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HSTS = "max-age=31536000"


@dataclass(frozen=True)
class Tls:
    """A TLS listener: the certificate and key through SDS from a file that Envoy reloads when a new
    one is moved into `watched_dir` (a rotated certificate is served without a restart)."""

    port: int
    sds_path: str
    watched_dir: str
    secret_name: str = "runtrack-server"


@dataclass(frozen=True)
class Bucket:
    per_second: int | str  # a str: the chart's placeholder
    burst: int | str


@dataclass(frozen=True)
class Limits:
    """Per-runner limits (edge/limits.yaml; in the chart, its `limits` values): token buckets, streams
    open at once, streams per connection."""

    calls: Bucket
    stream_opens: Bucket
    files: Bucket
    max_runners: int | str
    record_streams_per_runner: int | str
    watch_streams_per_link: int | str
    watch_streams_per_runner: int | str
    streams_per_connection: int | str
    # How the tracking replicas are chosen: MAGLEV (consistent hashing on the runner or link, so one
    # replica counts all of a runner's streams), or LEAST_REQUEST (streams spread; each replica
    # counts its own, so a runner could hold that many on each).
    stream_lb_policy: str = "MAGLEV"

    @classmethod
    def load(cls, path: Path | None = None) -> Limits:
        doc = yaml.safe_load((path or LIMITS_YAML).read_text())
        return cls(
            Bucket(**doc["calls"]),
            Bucket(**doc["stream_opens"]),
            Bucket(**doc["files"]),
            int(doc["max_runners"]),
            int(doc["open_streams"]["record_per_runner"]),
            int(doc["open_streams"]["watch_per_link"]),
            int(doc["open_streams"]["watch_per_runner"]),
            int(doc["streams_per_connection"]),
        )


@dataclass(frozen=True)
class Tracing:
    """Envoy's span of every request it traces, sent over OTLP/gRPC to a collector, and W3C trace
    context (`traceparent`) passed on to the replicas, whose spans join it. Envoy alone decides which
    requests are traced: `sampling_percent` of them, and of those that carry `x-client-trace-id` (a
    developer tracing one call) `client_sampling_percent`; a caller's own sampled `traceparent` keeps
    its trace id but forces nothing."""

    address: str
    port: int | str = 4317  # a str: the chart's placeholder
    sampling_percent: float | str = 1.0
    client_sampling_percent: float | str = 100.0
    # A name to resolve (a Service in a cluster) rather than an address.
    dns: bool = False


@dataclass(frozen=True)
class Layout:
    listen_port: int = 8080
    admin_port: int = 9901
    # Loopback in the local stack; every interface in a pod.
    listen_address: str = "127.0.0.1"
    # Paths are relative to Envoy's working directory, the repository root.
    descriptor_set: str = f"generated/{DESCRIPTOR_SET_NAME}"
    eds_dir: str = ".dev/run/eds"
    # When set, replicas are found by DNS instead of file-based EDS.
    dns: DnsDiscovery | None = None
    # When set, Envoy answers this path itself: 200, or 503 once its admin's /healthcheck/fail was
    # posted (a pod leaving), so a readiness probe takes the pod out before its listener drains.
    ready_path: str | None = None
    # A phone that sends nothing for this long has its stream reset.
    stream_idle_timeout_s: int = 600
    max_concurrent_streams: int = 10_000
    # What Envoy buffers per connection before it stops reading from the sender.
    buffer_limit_bytes: int = 256 * 1024
    clusters: tuple[Cluster, ...] = (
        Cluster("tracking", TRACKING.full_name),
        Cluster("summary", SUMMARY.full_name),
    )
    routes: tuple[Route, ...] = field(
        default_factory=lambda: (
            Route(
                f"/{TRACKING.full_name}/RecordTrack", "tracking", timeout_s=0, max_stream_s=6 * 3600, open_per="runner"
            ),
            # A watcher follows a run for as long as it lasts; after an hour it reconnects (with
            # after_seq), which checks its credentials again.
            Route(
                f"/{TRACKING.full_name}/WatchRun",
                "tracking",
                timeout_s=0,
                max_stream_s=3600,
                compress=False,
                open_per="link",
            ),
            Route(f"/{TRACKING.full_name}/", "tracking", retries=3),
            # A file of up to 16 MiB is parsed, analysed and stored in one call; not retried (its
            # body is larger than what Envoy keeps for a retry).
            Route(f"/{SUMMARY.full_name}/ImportRun", "summary", timeout_s=60),
            Route(f"/{SUMMARY.full_name}/", "summary", retries=3),
            Route("/grpc.reflection.", "tracking", retries=2),
            # Through Envoy, health answers for the replica that takes the call ("" and its service).
            Route(f"/{HEALTH.full_name}/", "tracking", retries=2),
        )
    )
    local_replies: tuple[LocalReply, ...] = LOCAL_REPLIES
    static_files: tuple[StaticFile, ...] = STATIC_FILES
    # None: no token check at all (a second listener for the benchmark's baseline only).
    auth: Auth | None = None
    # The TLS listener, beside the plaintext one unless `plaintext` is False (the chart).
    tls: Tls | None = field(default_factory=lambda: Tls(8443, ".dev/tls/sds/sds.yaml", ".dev/tls/sds"))
    plaintext: bool = True
    # Where the plaintext listener binds, when not listen_address.
    plaintext_address: str | None = None
    # Against slow and oversized clients: a request's headers must arrive within this, at most this
    # large and this many (beyond: 408, 431).
    request_headers_timeout_s: int = 10
    # A TLS handshake must complete within this (a ClientHello and then nothing is closed after it).
    tls_handshake_timeout_s: int = 10
    max_request_headers_kb: int = 32
    max_headers_count: int = 100
    # The overload manager: past the connection limit new connections are refused; as the heap nears
    # its limit Envoy frees memory, stops keep-alive, stops accepting connections, then requests.
    max_connections: int = 50_000
    max_heap_bytes: int = 2 * 1024 * 1024 * 1024
    # Per-runner limits: the chart's Envoy (its `limits` values, edge/limits.yaml's by default). None
    # on the local stacks, whose tests and benchmarks drive one runner hard on purpose; the limits'
    # own test runs a second Envoy with edge/limits.yaml.
    limits: Limits | None = None
    # None: Envoy traces nothing and passes no trace context on.
    tracing: Tracing | None = None
    # A listener on listen_address that serves the admin's /stats/prometheus and nothing else (GET
    # only), for a Prometheus that cannot reach the admin port on loopback (a pod's). None: no such
    # listener (the local stacks' Prometheus reads the admin port itself).
    stats_port: int | None = None


# What a failed request's log line says: which replica (and how many tries) it went to, and why it
# failed, so that an operator (or a test) can tell a replica leaving from a store failing.
FAILURE_LOG_FORMAT = (
    "[%START_TIME%] request failed %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% "
    "status=%RESPONSE_CODE% grpc_status=%GRPC_STATUS% flags=%RESPONSE_FLAGS% "
    "upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    "ms=%DURATION% details=%RESPONSE_CODE_DETAILS% transport=%UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
)
# The gRPC statuses that mean the server side failed (a caller's mistake or a limit is not logged).
SERVER_FAILURES = ["UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"]


def _failure_log() -> dict[str, Any]:
    """One line on Envoy's stdout per request that failed on the server's side (HTTP 5xx or one of
    SERVER_FAILURES): nothing per successful request, so the hot path pays nothing."""
    return {
        "name": "envoy.access_loggers.stdout",
        "filter": {
            "or_filter": {
                "filters": [
                    {
                        "status_code_filter": {
                            "comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "log.min_status"}}
                        }
                    },
                    {"grpc_status_filter": {"statuses": SERVER_FAILURES}},
                ]
            }
        },
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": FAILURE_LOG_FORMAT}},
        },
    }


def _addr(port: int | str, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


# The headers that carry the limits on streams open at once to the replicas; Envoy drops any a
# client sent.
OPEN_LIMIT_HEADERS = {
    "record": "x-runtrack-max-record-streams",
    "link_watch": "x-runtrack-max-link-watchers",
    "runner_watch": "x-runtrack-max-runner-watchers",
}


def _route(r: Route, limits: Limits | None) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": r.cluster, "timeout": f"{r.timeout_s}s"}
    extra: dict[str, Any] = {}
    if limits is not None and r.open_per is not None:
        if r.open_per == "runner":
            keys, most = [CALLER_HEADER], {"record": limits.record_streams_per_runner}
        else:
            # A link holder's streams by the link; a runner's (their own runs, or PUBLIC ones) by the runner.
            keys = [LINK_ID_HEADER, CALLER_HEADER]
            most = {"link_watch": limits.watch_streams_per_link, "runner_watch": limits.watch_streams_per_runner}
        action["hash_policy"] = [{"header": {"header_name": k}} for k in keys]
        extra["request_headers_to_add"] = [
            {"header": {"key": OPEN_LIMIT_HEADERS[f], "value": str(n)}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for f, n in most.items()
        ]
    if r.max_stream_s is not None:
        action["max_stream_duration"] = {"max_stream_duration": f"{r.max_stream_s}s"}
    if r.retries:
        action["retry_policy"] = {
            "retry_on": RETRY_ON,
            "num_retries": r.retries,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": PREVIOUS_HOSTS},
                }
            ],
            # A retry picks a replica not tried yet: least-request balancing favours a replica that just
            # died (no call lasts there), so picking again must be allowed more than a few times.
            "host_selection_retry_max_attempts": 12,
            # Spaced over up to ~1.75 s: a replica that died is taken out of the balancing by the first
            # call that fails on it, but on a busy machine that news reached Envoy's workers some
            # hundreds of milliseconds later, and calls retried within it found the dead ones again.
            "retry_back_off": {"base_interval": "0.25s", "max_interval": "1s"},
        }
    route: dict[str, Any] = {"match": {"prefix": r.prefix}, "route": action, **extra}
    if not r.compress:
        route["typed_per_filter_config"] = {
            "envoy.filters.http.compressor": {"@type": COMPRESSOR_PER_ROUTE, "disabled": True}
        }
    return route


def _static_route(f: StaticFile) -> dict[str, Any]:
    """Served by Envoy itself; the transcoder (which refuses paths it cannot map) is off here."""
    return {
        "match": {"path": f.path},
        "direct_response": {"status": 200, "body": {"filename": f.file}},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": f.content_type}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "cache-control", "value": "no-cache"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        ],
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": {"@type": FILTER_CONFIG, "disabled": True}
        },
    }


def json_methods() -> dict[str, tuple[str, ...]]:
    """Each JSON path of the API (as a regex on the path without its query) and the HTTP methods its
    google.api.http annotations declare, from the descriptors: the document's paths and verbs."""
    from google.api import annotations_pb2, http_pb2

    found: dict[str, list[str]] = {}
    for service in (TRACKING, SUMMARY):
        for method in service.methods:
            rule: http_pb2.HttpRule = method.GetOptions().Extensions[annotations_pb2.http]  # type: ignore[index]
            for binding in (rule, *rule.additional_bindings):
                verb = binding.WhichOneof("pattern")
                if verb is None or verb == "custom":
                    continue
                template = getattr(binding, verb)
                # A variable is one segment: no "/", and no ":" (which starts a custom verb).
                parts = re.split(r"{[^}]*}", template)
                regex = "^" + "[^/:]+".join(re.escape(part) for part in parts) + "$"
                found.setdefault(regex, [])
                if verb.upper() not in found[regex]:
                    found[regex].append(verb.upper())
    return {regex: tuple(methods) for regex, methods in found.items()}


def _method_not_allowed() -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message="this path does not answer this HTTP method")
    info = error_details_pb2.ErrorInfo(reason="METHOD_NOT_ALLOWED", domain="runtrack")
    status.details.add().Pack(info)
    return status


def _method_not_allowed_routes() -> list[dict[str, Any]]:
    """A known JSON path with a method none of its operations takes: 405 with `Allow`, and the error
    model's body (UNIMPLEMENTED, reason METHOD_NOT_ALLOWED), answered here, as the document says."""
    body = json_format.MessageToJson(_method_not_allowed(), indent=None)
    routes = []
    for regex, methods in json_methods().items():
        allowed = "^(" + "|".join(methods) + ")$"
        routes.append(
            {
                "match": {
                    "safe_regex": {"regex": regex},
                    "headers": [
                        {"name": ":method", "string_match": {"safe_regex": {"regex": allowed}}, "invert_match": True}
                    ],
                },
                "direct_response": {"status": 405, "body": {"inline_string": body}},
                "response_headers_to_add": [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in (("allow", ", ".join(methods)), ("content-type", "application/json"))
                ],
                "typed_per_filter_config": {
                    "envoy.filters.http.grpc_json_transcoder": {"@type": FILTER_CONFIG, "disabled": True}
                },
            }
        )
    return routes


def _method_not_allowed_replies() -> list[dict[str, Any]]:
    """A QUERY without a content-type is refused by Envoy before routing (400,
    `query_missing_content_type`); on a known JSON path, whose operations take no QUERY, it is
    the same 405 as any other undeclared method."""
    body = json.loads(json_format.MessageToJson(_method_not_allowed()))
    return [
        {
            "filter": {
                "and_filter": {
                    "filters": [
                        _http_status(400),
                        {"header_filter": {"header": {"name": ":method", "string_match": {"exact": "QUERY"}}}},
                        {
                            "header_filter": {
                                "header": {
                                    "name": ":path",
                                    "string_match": {"safe_regex": {"regex": regex.removesuffix("$") + r"(\?.*)?$"}},
                                }
                            }
                        },
                    ]
                }
            },
            "status_code": 405,
            "headers_to_add": [
                {"header": {"key": "allow", "value": ", ".join(methods)}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
            "body_format_override": {"json_format": body, "content_type": "application/json"},
        }
        for regex, methods in json_methods().items()
    ]


def _bucket(b: Bucket) -> dict[str, Any]:
    return {"max_tokens": b.burst, "tokens_per_fill": b.per_second, "fill_interval": "1s"}


def _per_runner_limits(limits: Limits) -> dict[str, Any]:
    """Local rate limit with one bucket per runner and family (a descriptor entry with an empty value
    makes a bucket per value seen). After jwt_authn, which set x-runtrack-user from the token; calls
    without one (the page's files, health) are not counted."""
    on = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "per_runner_limits"}

    def family(name: str, key: str = "user", header: str = CALLER_HEADER) -> dict[str, Any]:
        return {
            "actions": [
                {"request_headers": {"header_name": header, "descriptor_key": key}},
                {
                    "header_value_match": {
                        "descriptor_key": "family",
                        "descriptor_value": name,
                        "expect_match": True,
                        "headers": _family_match(name),
                    }
                },
            ]
        }

    def bucket(name: str, b: Bucket, key: str = "user") -> dict[str, Any]:
        return {"entries": [{"key": key, "value": ""}, {"key": "family", "value": name}], "token_bucket": _bucket(b)}

    buckets = {"calls": limits.calls, "stream_opens": limits.stream_opens, "files": limits.files}
    # A live link's token carries no runner: its calls (GetRun) and watches opened (WatchRun) count
    # in buckets of the link (its jti, set by jwt_authn), sized as a runner's.
    link_buckets = {"calls": limits.calls, "stream_opens": limits.stream_opens}

    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": LOCAL_RATELIMIT,
            "stat_prefix": "per_runner",
            # The default bucket is not consumed by a call a runner's bucket counted; it must exist.
            "token_bucket": {"max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1s"},
            "always_consume_default_token_bucket": False,
            "filter_enabled": on,
            "filter_enforced": on,
            "rate_limited_as_resource_exhausted": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "max_dynamic_descriptors": limits.max_runners,
            "descriptors": [
                *(bucket(name, b) for name, b in buckets.items()),
                *(bucket(name, b, "link") for name, b in link_buckets.items()),
            ],
            "rate_limits": [
                *(family(name) for name in buckets),
                *(family(name, "link", LINK_ID_HEADER) for name in link_buckets),
            ],
        },
    }


def _compressor() -> dict[str, Any]:
    """gzip for the page, its bundle and JSON answers (Envoy's default content types: html, css,
    javascript, json...), when the client accepts it."""
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": {
            "@type": COMPRESSOR,
            "response_direction_config": {"common_config": {"min_content_length": 1024}},
            "compressor_library": {
                "name": "gzip",
                "typed_config": {
                    "@type": GZIP,
                    "memory_level": 8,
                    "window_bits": 15,
                    "compression_level": "DEFAULT_COMPRESSION",
                },
            },
        },
    }


# A JSON call: not gRPC (before the transcoder, e.g. refused by jwt_authn), or transcoded (the
# transcoder keeps the call's own path in x-envoy-original-path, and its content-type is gRPC by then).
JSON_REQUEST = {
    "or_filter": {
        "filters": [
            {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}},
            {
                "header_filter": {
                    "header": {
                        "name": "content-type",
                        "string_match": {"prefix": "application/grpc"},
                        "invert_match": True,
                        "treat_missing_header_as_empty": True,
                    }
                }
            },
        ]
    }
}


def _local_replies(r: LocalReply) -> list[dict[str, Any]]:
    """Two mappers: a JSON call gets the status as its JSON body, as the transcoder prints a
    replica's errors; a gRPC call gets it as trailers-only (`grpc-status-details-bin`, and the
    body, which Envoy sends as grpc-message, equal to the status's message)."""
    body = json.loads(json_format.MessageToJson(r.status()))
    if r.json_message is not None:
        body["message"] = r.json_message
    json_reply: dict[str, Any] = {
        "filter": {"and_filter": {"filters": [r.when, JSON_REQUEST]}},
        "body_format_override": {"json_format": body, "content_type": "application/json"},
    }
    details = base64.b64encode(r.status().SerializeToString()).decode()
    # grpc-status too: Envoy's own mapping of the HTTP status (400 -> INTERNAL, ...) gives way to it.
    grpc_reply: dict[str, Any] = {
        "filter": r.when,
        "headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in (("grpc-status", str(r.code)), ("grpc-status-details-bin", details))
        ],
        "body": {"inline_string": r.message},
    }
    if r.http_status is not None:
        json_reply["status_code"] = grpc_reply["status_code"] = r.http_status
    return [json_reply, grpc_reply] if r.grpc else [json_reply]


# gRPC metadata keys are lowercase letters, digits, "_", "-" and "."; HTTP/1.1 allows more in a
# header name (`!`, `*`, `^`, `|`...), and a replica refused such a transcoded call with INTERNAL.
# A grpc-timeout or grpc-encoding the gRPC runtime cannot parse is refused here too: forwarded, one
# such call left the replica's connection from Envoy failing every later call that had a deadline
# (INTERNAL "Error parsing 'grpc-timeout' metadata", for every runner) until it was reopened.
# Envoy refuses it first, as the bad request it is; and a query parameter with no name, which the
# transcoder would silently ignore.
# Replacing a runner's privacy zones needs a body: a PUT without one would read as "no zones" and put
# their door back on every shared trail. `{"zones": []}` still clears them, on purpose.
# Answered as text: Envoy's 400 mapping (MALFORMED_REQUEST below) wraps it in the JSON error model.
ZONES_BODY_REQUIRED = 'body: is required: send {"zones": [...]} (an empty list clears every zone)'
# The transcoder drops a null in a list: `{"zones": [null]}` read as `{"zones": []}` and cleared them.
ZONES_NO_NULL = "zones: a zone is an object {latitude, longitude, radiusM}, not null or another value"

# A JSON call's body, and an imported file, at most this large (by its content-length): beyond, 413
# here. The transcoder turns a larger body into a gRPC message the replica refuses (over its 1 MiB,
# or 16 MiB for ImportRun), answered as 429 with no ErrorInfo: read as "slow down", retried.
JSON_REQUEST_MAX_BYTES = 1024 * 1024
IMPORT_REQUEST_MAX_BYTES = 16 * 1024 * 1024

HEADER_NAME_CHECK = (
    """
-- Whether the JSON object's own "zones" list has an element that is not an object (null, which
-- the transcoder would drop; a list...). One elsewhere, in a field the transcoder drops, or inside
-- a string, is not one.
function zones_hold_other_than_objects(s)
  local i, n, depth, zones_depth, element_start, key_at_root = 1, #s, 0, nil, false, false
  while i <= n do
    local c = string.sub(s, i, i)
    if c == '"' then
      local j = i + 1
      while j <= n do
        local d = string.sub(s, j, j)
        if d == "\\\\" then j = j + 2 elseif d == '"' then break else j = j + 1 end
      end
      key_at_root = depth == 1 and string.sub(s, i + 1, j - 1) == "zones"
        and string.find(s, "^%s*:", j + 1) ~= nil
      element_start = false
      i = j + 1
    elseif c == "[" or c == "{" then
      if element_start and c == "[" then return true end
      depth = depth + 1
      if c == "[" and key_at_root and depth == 2 then zones_depth = 2 end
      key_at_root = false
      element_start = depth == zones_depth
      i = i + 1
    elseif c == "]" or c == "}" then
      if depth == zones_depth then zones_depth = nil end
      depth = depth - 1
      element_start = false
      i = i + 1
    elseif c == "," then
      element_start = depth == zones_depth
      i = i + 1
    elseif string.find(c, "%s") or c == ":" then
      i = i + 1
    else
      if element_start then return true end
      element_start = false
      i = i + 1
    end
  end
  return false
end

function envoy_on_request(handle)
  local path = handle:headers():get(":path") or ""
  local content_type = handle:headers():get("content-type") or ""
  local length = tonumber(handle:headers():get("content-length") or "0") or 0
  if string.find(content_type, "^application/grpc") == nil then
    local limit = """
    + str(JSON_REQUEST_MAX_BYTES)
    + """
    if string.find(path, "^/v1/runs:import") then
      limit = """
    + str(IMPORT_REQUEST_MAX_BYTES)
    + """
    end
    if length > limit then
      handle:respond({[":status"] = "413"}, "the body is " .. length .. " bytes; this method takes at most " .. limit)
      return
    end
    -- Sent chunked, or over HTTP/2 without a content-length: read whole (past the connection's
    -- buffer, 256 KiB, Envoy answers 413 itself) and measured. An import without one is bounded by
    -- the transcoder's own limit, which is the import's.
    local method = handle:headers():get(":method")
    if handle:headers():get("content-length") == nil and (method == "POST" or method == "PUT" or method == "PATCH")
        and string.find(path, "^/v1/runs:import") == nil then
      local body = handle:body()
      local size = body and body:length() or 0
      if size > limit then
        handle:respond({[":status"] = "413"}, "the body is " .. size .. " bytes; this method takes at most " .. limit)
        return
      end
    end
  end
  if string.find(path, "[?&]=") then
    handle:respond({[":status"] = "400"}, "a query parameter has no name")
    return
  end
  if handle:headers():get(":method") == "PUT" and string.find(path, "^/v1/users/[^/?]+/privacyZones") then
    local body = handle:body()
    if body == nil or body:length() == 0 then
      handle:respond({[":status"] = "400"}, [==["""
    + ZONES_BODY_REQUIRED
    + """]==])
      return
    end
    if zones_hold_other_than_objects(body:getBytes(0, body:length())) then
      handle:respond({[":status"] = "400"}, [==["""
    + ZONES_NO_NULL
    + """]==])
      return
    end
  end
  for name, _ in pairs(handle:headers()) do
    if string.sub(name, 1, 1) ~= ":" and string.find(name, "[^0-9a-z_.%-]") then
      local rule = ": a header name must be lowercase letters, digits, _ - or ."
      handle:respond({[":status"] = "400"}, "header " .. name .. rule)
      return
    end
  end
  local timeout = handle:headers():get("grpc-timeout")
  if timeout ~= nil and not string.find(timeout, "^%d%d?%d?%d?%d?%d?%d?%d?[HMSmun]$") then
    handle:respond({[":status"] = "400"}, "header grpc-timeout: 1 to 8 digits and a unit (H M S m u n)")
    return
  end
  local encoding = handle:headers():get("grpc-encoding")
  if encoding ~= nil and encoding ~= "identity" and encoding ~= "gzip" and encoding ~= "deflate" then
    handle:respond({[":status"] = "400"}, "header grpc-encoding: identity, gzip or deflate")
    return
  end
  if string.find(path, "^/v1/runs/[^/?]+:watch") and string.find(content_type, "^application/grpc") == nil then
    handle:streamInfo():dynamicMetadata():set("runtrack", "watch", "json")
  end
end

-- WatchRun over JSON answers one message per line, as it happens: said by its content type.
function envoy_on_response(handle)
  local runtrack = handle:streamInfo():dynamicMetadata():get("runtrack")
  if runtrack ~= nil and runtrack["watch"] == "json" and handle:headers():get(":status") == "200" then
    handle:headers():replace("content-type", "application/x-ndjson")
  end
end
"""
)


def _header_name_check() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {"@type": LUA, "default_source_code": {"inline_string": HEADER_NAME_CHECK.strip()}},
    }


def _auth_filters(auth: Auth) -> list[dict[str, Any]]:
    """First drop any x-runtrack-user the client sent, then check the token and set the header
    from its `sub`. Runs before the transcoder, so JSON calls are matched on their own paths."""
    open_rules = [{"match": {"prefix": p}} for p in auth.open_prefixes]
    open_rules += [{"match": {"path": p}} for p in auth.open_paths]
    keys: dict[str, Any]
    if auth.remote_jwks is None:
        keys = {"local_jwks": {"filename": auth.jwks_file}}
    else:
        remote = auth.remote_jwks
        keys = {
            "remote_jwks": {
                "http_uri": {"uri": remote.url, "cluster": remote.cluster, "timeout": "5s"},
                "cache_duration": f"{remote.cache_duration_s}s",
                # Fetched when Envoy starts (and again before the cache expires), not on the first
                # call; a failed fetch is retried.
                "async_fetch": {"fast_listener": False},
                "retry_policy": {"num_retries": 3},
            }
        }
    jwt_authn: dict[str, Any] = {
        "@type": JWT_AUTHN,
        "providers": {
            "runtrack": {
                "issuer": auth.issuer,
                "audiences": [auth.audience],
                **keys,
                "forward": True,  # replicas call each other on the caller's behalf with it
                # Only the header: a token in a URL's query string ends up in logs and histories.
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "claim_to_headers": [{"header_name": CALLER_HEADER, "claim_name": "sub"}],
                "clock_skew_seconds": auth.clock_skew_s,
                "require_expiration": True,
                # A token seen before is not verified again until it expires (each worker keeps its
                # last 10,000): a phone's calls, and a flood from one token, cost no signature check
                # each. A key taken out of the JWKS stops new tokens at once, not those already seen.
                "jwt_cache_config": {"jwt_cache_size": 10_000},
            }
        },
        # The first matching rule applies: the open paths, then everything else needs a token.
        "rules": [*open_rules, {"match": {"prefix": "/"}, "requires": {"provider_name": "runtrack"}}],
    }
    if auth.link_jwks_file is not None:
        jwt_authn["providers"]["runlink"] = {
            "issuer": auth.link_issuer,
            "audiences": [auth.link_audience],
            "local_jwks": {"filename": auth.link_jwks_file},
            # GetRun forwards it to CheckLiveLink, which says whether the link still stands, and to
            # GetVisibleSummary; WatchRun to CheckRunVisible.
            "forward": True,
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "claim_to_headers": [
                {"header_name": LINK_RUN_HEADER, "claim_name": "run_id"},
                {"header_name": LINK_ID_HEADER, "claim_name": "jti"},
            ],
            "clock_skew_seconds": auth.clock_skew_s,
            "require_expiration": True,
        }
        either = {"requires_any": {"requirements": [{"provider_name": "runtrack"}, {"provider_name": "runlink"}]}}
        # Before the catch-all: a link opens its run (GET /v1/runs/{id}) and its watch, as JSON and as
        # gRPC, and nothing else ("[^/:]+" leaves out /track, /cursor, :stop...).
        link_rules = [
            {
                "match": {
                    "safe_regex": {"regex": "^/v1/runs/[^/:]+(:watch)?$"},
                    "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                },
                "requires": either,
            },
            *(
                {"match": {"path": f"/{service.full_name}/{method}"}, "requires": either}
                for service, method in (
                    (TRACKING, "WatchRun"),
                    (SUMMARY, "GetRun"),
                    (TRACKING, "CheckLiveLink"),
                    # What GetRun and WatchRun ask the other service on the holder's behalf.
                    (TRACKING, "GetVisibleSummary"),
                    (SUMMARY, "CheckRunVisible"),
                )
            ),
        ]
        jwt_authn["rules"] = [*open_rules, *link_rules, jwt_authn["rules"][-1]]
    removed = [{"remove": h} for h in (CALLER_HEADER, LINK_RUN_HEADER, LINK_ID_HEADER, *OPEN_LIMIT_HEADERS.values())]
    strip = {"@type": HEADER_MUTATION, "mutations": {"request_mutations": removed}}
    return [
        {"name": "envoy.filters.http.header_mutation", "typed_config": strip},
        {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_authn},
    ]


def _dns_cluster_type(refresh_s: int, *, logical: bool = False) -> dict[str, Any]:
    """Envoy's DNS cluster (what STRICT_DNS was: one host per address; LOGICAL_DNS when `logical`),
    asked every `refresh_s` whatever the record's TTL. The name is asked as written: a pod's
    resolv.conf search list (ndots 5) would otherwise send each refresh through every search domain
    first, so names must be fully qualified."""
    config: dict[str, Any] = {
        "@type": DNS_CLUSTER,
        "dns_refresh_rate": f"{refresh_s}s",
        "respect_dns_ttl": False,
        "dns_lookup_family": "V4_PREFERRED",
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {"@type": CARES, "dns_resolver_options": {"no_default_search_domain": True}},
        },
    }
    if logical:
        config["all_addresses_in_single_endpoint"] = True
    return {"name": "envoy.cluster.dns", "typed_config": config}


def _discovery(c: Cluster, layout: Layout) -> dict[str, Any]:
    if layout.dns is not None:
        host = layout.dns.name_pattern.format(cluster=c.name)
        return {
            "cluster_type": _dns_cluster_type(layout.dns.refresh_s),
            "load_assignment": {
                "cluster_name": c.name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(layout.dns.port, host)}}]}],
            },
        }
    return {
        "type": "EDS",
        "eds_cluster_config": {
            "service_name": c.name,
            "eds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": f"{layout.eds_dir}/{c.name}.yaml",
                    "watched_directory": {"path": layout.eds_dir},
                },
            },
        },
    }


def _jwks_cluster(remote: RemoteJwks) -> dict[str, Any]:
    """The identity provider, for jwt_authn's key fetches: HTTPS, its certificate verified."""
    tls = {
        "@type": TLS_CONTEXT,
        "sni": remote.host,
        "common_tls_context": {
            "validation_context": {
                "trusted_ca": {"filename": remote.ca_file},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": remote.host}}],
            }
        },
    }
    return {
        "name": remote.cluster,
        "cluster_type": _dns_cluster_type(30, logical=True),
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": remote.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(remote.port, remote.host)}}]}],
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
    }


def _tracing(t: Tracing) -> dict[str, Any]:
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OTEL_TRACER,
                # An export is not retried: on a busy machine 1 s lost a batch of spans now and then.
                "grpc_service": {"envoy_grpc": {"cluster_name": TRACES_CLUSTER}, "timeout": "5s"},
                "service_name": "envoy",
            },
        },
        "random_sampling": {"value": t.sampling_percent},
        "client_sampling": {"value": t.client_sampling_percent},
    }


def _traces_cluster(t: Tracing) -> dict[str, Any]:
    """The collector Envoy sends its spans to (OTLP over gRPC, so HTTP/2)."""
    return {
        "name": TRACES_CLUSTER,
        **({"cluster_type": _dns_cluster_type(30, logical=True)} if t.dns else {"type": "STATIC"}),
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": TRACES_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(t.port, t.address)}}]}],
        },
    }


def _ready_check(path: str) -> dict[str, Any]:
    """Envoy answers `path` itself (no token, no replica): 200 while it takes traffic, 503 once
    told to fail its health checks."""
    return {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": HEALTH_CHECK,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": path}}],
        },
    }


def _lb_policy(c: Cluster, layout: Layout) -> str:
    """The cluster's own policy; for the replicas that serve the limited streams, the limits' own."""
    streams = any(r.open_per is not None and r.cluster == c.name for r in layout.routes)
    return layout.limits.stream_lb_policy if layout.limits is not None and streams else c.lb_policy


def _cluster(c: Cluster, layout: Layout) -> dict[str, Any]:
    return {
        "name": c.name,
        **_discovery(c, layout),
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": layout.buffer_limit_bytes,
        "lb_policy": _lb_policy(c, layout),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "max_concurrent_streams": layout.max_concurrent_streams,
                        # With Envoy's default 256 MiB windows here, a replica was seen reading ~16 MB
                        # ahead of a stream it had stopped reading; with 64 KiB, ~0.2 MB.
                        "initial_stream_window_size": 65536,
                        "initial_connection_window_size": 1048576,
                        # Python gRPC servers answer pings more frequent than their limit with GOAWAY.
                        "connection_keepalive": {"interval": "300s", "timeout": "20s"},
                    }
                },
            }
        },
        # A replica that answers NOT_SERVING is out at once; one that answers slowly (the machine busy, a
        # store node's JVM starting beside it) or not at all (it died) gets 2 s and three tries before
        # the health check takes it out. A dead one is out sooner, by the calls themselves (below).
        "health_checks": [
            {
                "timeout": "2s",
                "interval": "1s",
                "no_traffic_interval": "1s",
                "unhealthy_threshold": 3,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": c.health_service},
            }
        ],
        # Never send traffic to a replica that failed its health check, even when most did.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        # A call that cannot reach a replica (connection refused or reset: the process died) takes it
        # out of the balancing at once, until its next passing health check. Without it, for the three
        # health checks a dead replica takes, least-request balancing preferred the dead replicas (no
        # call lasts there): two of three killed together failed 138 of 456 calls after their retries.
        # Only local failures count; a gRPC error status is an answer, not a failure of the replica.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_local_origin_success_rate": 0,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "interval": "1s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 100_000,
                    "max_pending_requests": 100_000,
                    "max_requests": 100_000,
                    "max_retries": 1_000,
                }
            ]
        },
    }


def _remote_jwks(layout: Layout) -> RemoteJwks | None:
    return layout.auth.remote_jwks if layout.auth is not None else None


def render(layout: Layout) -> dict[str, Any]:
    transcoder = {
        "@type": TRANSCODER,
        "proto_descriptor": layout.descriptor_set,
        "services": [TRACKING.full_name, SUMMARY.full_name],
        "convert_grpc_status": True,
        # A server stream (WatchRun) as one JSON message per line, each sent as it arrives.
        "print_options": {"always_print_primitive_fields": True, "stream_newline_delimited": True},
        "request_validation_options": {"reject_unknown_method": True, "reject_unknown_query_parameters": True},
        # A whole GetTrack page (10,000 points, ~1 MB as protobuf) is transcoded at once; the default
        # limit is the connection's buffer (256 KiB here), which refused pages over ~2,500 points.
        "max_response_body_size": TRANSCODED_RESPONSE_MAX_BYTES,
        # An imported file (ImportRun's HttpBody) up to the service's own limit; larger: 413 here.
        "max_request_body_size": TRANSCODED_REQUEST_MAX_BYTES,
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "public",
        "codec_type": "AUTO",
        # Paths are matched (by jwt_authn's open rules too) as normalised: no dot segments, no "//".
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "stream_idle_timeout": f"{layout.stream_idle_timeout_s}s",
        "request_headers_timeout": f"{layout.request_headers_timeout_s}s",
        "max_request_headers_kb": layout.max_request_headers_kb,
        "common_http_protocol_options": {"max_headers_count": layout.max_headers_count},
        # A method HTTP/1.1's parser does not know (QUERY) reaches the routes, to be answered 405.
        "http_protocol_options": {"allow_custom_methods": True},
        # Small windows, as for an edge proxy: a phone can be at most this far ahead of the
        # replica reading its stream, so a slow store pushes back on the phone, not on memory.
        "http2_protocol_options": {
            "max_concurrent_streams": (
                layout.limits.streams_per_connection if layout.limits is not None else layout.max_concurrent_streams
            ),
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "local_reply_config": {
            "mappers": [*_method_not_allowed_replies(), *(m for r in layout.local_replies for m in _local_replies(r))]
        },
        "access_log": [_failure_log()],
        **({"tracing": _tracing(layout.tracing)} if layout.tracing is not None else {}),
        "route_config": {
            "name": "runtrack",
            "max_direct_response_body_size_bytes": MAX_STATIC_BYTES,
            "virtual_hosts": [
                {
                    "name": "runtrack",
                    "domains": ["*"],
                    "routes": [
                        *(_static_route(f) for f in layout.static_files),
                        *_method_not_allowed_routes(),
                        *(_route(r, layout.limits) for r in layout.routes),
                    ],
                }
            ],
        },
        "http_filters": [
            *([_ready_check(layout.ready_path)] if layout.ready_path is not None else []),
            _compressor(),
            _header_name_check(),
            *(_auth_filters(layout.auth) if layout.auth is not None else []),
            *([_per_runner_limits(layout.limits)] if layout.limits is not None and layout.auth is not None else []),
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    listeners = []
    if layout.plaintext:
        listeners.append(_listener("public", layout.listen_port, layout, hcm, layout.plaintext_address))
    if layout.tls is not None:
        listeners.append(_tls_listener(layout.tls, layout, hcm))
    if layout.stats_port is not None:
        listeners.append(_stats_listener(layout.stats_port, layout))
    return {
        "node": {"id": "runtrack-envoy", "cluster": "runtrack"},
        "admin": {"address": _addr(layout.admin_port)},
        "overload_manager": _overload_manager(layout),
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                *(_cluster(c, layout) for c in layout.clusters),
                *([_jwks_cluster(remote)] if (remote := _remote_jwks(layout)) is not None else []),
                *([_traces_cluster(layout.tracing)] if layout.tracing is not None else []),
                *([_admin_cluster(layout.admin_port)] if layout.stats_port is not None else []),
            ],
        },
    }


FIXED_HEAP = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


def _overload_manager(layout: Layout) -> dict[str, Any]:
    def at(share: float) -> list[dict[str, Any]]:
        return [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": share}}]

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.fixed_heap",
                "typed_config": {"@type": FIXED_HEAP, "max_heap_size_bytes": layout.max_heap_bytes},
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": DOWNSTREAM_CONNECTIONS,
                    "max_active_downstream_connections": layout.max_connections,
                },
            },
        ],
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": at(0.90)},
            {"name": "envoy.overload_actions.disable_http_keepalive", "triggers": at(0.92)},
            {"name": "envoy.overload_actions.stop_accepting_connections", "triggers": at(0.95)},
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": at(0.98)},
        ],
    }


def _listener(name: str, port: int, layout: Layout, hcm: dict[str, Any], address: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "address": _addr(port, address or layout.listen_address),
        "per_connection_buffer_limit_bytes": layout.buffer_limit_bytes,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


ADMIN_CLUSTER = "admin"
STATS_PATH = "/stats/prometheus"


def _stats_listener(port: int, layout: Layout) -> dict[str, Any]:
    """Envoy's metrics for a scraper outside the pod: a GET of STATS_PATH goes to the admin on
    loopback; any other path or method gets 404, so nothing else of the admin (its POSTs that fail
    health checks, drain listeners or quit) is reachable from here."""
    hcm = {
        "@type": HCM,
        "stat_prefix": "stats",
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "route_config": {
            "name": "stats",
            "virtual_hosts": [
                {
                    "name": "stats",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "path": STATS_PATH,
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": ADMIN_CLUSTER, "timeout": "5s"},
                        },
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return _listener("stats", port, layout, hcm)


def _admin_cluster(admin_port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(admin_port)}}]}],
        },
    }


def _tls_listener(tls: Tls, layout: Layout, hcm: dict[str, Any]) -> dict[str, Any]:
    """The same routes and filters over TLS (ALPN: h2 for gRPC, HTTP/1.1 for the rest); every answer
    tells a browser to keep to HTTPS (HSTS)."""
    secure = copy.deepcopy(hcm)
    secure["stat_prefix"] = "public_tls"
    for host in secure["route_config"]["virtual_hosts"]:
        host["response_headers_to_add"] = [
            {
                "header": {"key": "strict-transport-security", "value": HSTS},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    listener = _listener("public_tls", tls.port, layout, secure)
    # Without it, a connection that stops mid-handshake is held until the HCM's idle timeout (an hour).
    listener["filter_chains"][0]["transport_socket_connect_timeout"] = f"{layout.tls_handshake_timeout_s}s"
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                    "cipher_suites": list(TLS_CIPHERS),
                },
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [
                    {
                        "name": tls.secret_name,
                        "sds_config": {
                            "path_config_source": {
                                "path": tls.sds_path,
                                "watched_directory": {"path": tls.watched_dir},
                            },
                            "resource_api_version": "V3",
                        },
                    }
                ],
            },
        },
    }
    return listener


def eds_document(cluster: str, ports: list[int]) -> dict[str, Any]:
    """The file-based EDS answer listing the replicas of `cluster` on loopback."""
    return {
        "version_info": ",".join(map(str, ports)) or "empty",
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(p)}} for p in ports]}],
            }
        ],
    }


# ---- Kubernetes ------------------------------------------------------------------------------
# Placeholders in the chart's copy, replaced by the chart (templates/envoy/configmap.yaml) with the
# release's values. Those standing for a whole YAML value get a JSON string (valid YAML); the others
# sit inside a DNS name and get the bare label.
NAMESPACE = "__NAMESPACE__"
CLUSTER_DOMAIN = "__CLUSTER_DOMAIN__"
JWT_ISSUER = "__JWT_ISSUER__"
JWT_AUDIENCE = "__JWT_AUDIENCE__"
JWKS_URL = "__JWKS_URL__"
JWKS_HOST = "__JWKS_HOST__"
JWKS_PORT = "__JWKS_PORT__"
JWKS_CA_FILE = "__JWKS_CA_FILE__"
# Where the plaintext listener binds: every interface when the chart's envoy.plaintext is true, else
# the pod's own loopback (nothing outside the pod reaches it; the Service has no plaintext port).
PLAINTEXT_ADDRESS = "__PLAINTEXT_ADDRESS__"
# Traces: the chart's `tracing` values (the collector's host and port, Envoy's sampling). With no
# collector named, the chart puts 0 % in both shares: Envoy traces nothing and sends nowhere.
K8S_TRACING = Tracing(
    "__TRACES_HOST__",
    "__TRACES_PORT__",
    "__TRACE_SAMPLING_PERCENT__",
    "__TRACE_CLIENT_SAMPLING_PERCENT__",
    dns=True,
)
# The per-runner limits: numbers from the chart's `limits` values.
K8S_LIMITS = Limits(
    Bucket("__LIMIT_CALLS_PER_SECOND__", "__LIMIT_CALLS_BURST__"),
    Bucket("__LIMIT_STREAM_OPENS_PER_SECOND__", "__LIMIT_STREAM_OPENS_BURST__"),
    Bucket("__LIMIT_FILES_PER_SECOND__", "__LIMIT_FILES_BURST__"),
    "__LIMIT_MAX_RUNNERS__",
    "__LIMIT_RECORD_STREAMS_PER_RUNNER__",
    "__LIMIT_WATCH_STREAMS_PER_LINK__",
    "__LIMIT_WATCH_STREAMS_PER_RUNNER__",
    "__LIMIT_STREAMS_PER_CONNECTION__",
    "__LIMIT_STREAM_LB_POLICY__",
)
K8S_PLACEHOLDERS = (
    NAMESPACE,
    CLUSTER_DOMAIN,
    JWT_ISSUER,
    JWT_AUDIENCE,
    JWKS_URL,
    JWKS_HOST,
    JWKS_PORT,
    JWKS_CA_FILE,
    PLAINTEXT_ADDRESS,
    *dataclasses.astuple(K8S_TRACING)[:4],
    # Every value of K8S_LIMITS (its buckets' too) is a placeholder.
    *(v for f in dataclasses.astuple(K8S_LIMITS) for v in (f if isinstance(f, tuple) else (f,))),
)

# The replicas' gRPC port in their pods, behind the headless Services `tracking` and `summary`.
REPLICA_PORT = 50051
# Where the chart mounts the JWKS (its ConfigMap's key `jwks.json`).
K8S_JWKS_DIR = "/etc/runtrack/jwks"
K8S_JWKS_FILE = f"{K8S_JWKS_DIR}/jwks.json"
# The live links' public key (ConfigMap envoy-live-jwks); the tracking pods hold the private half.
K8S_LIVE_JWKS_DIR = "/etc/runtrack/live-jwks"
K8S_LIVE_JWKS_FILE = f"{K8S_LIVE_JWKS_DIR}/live-jwks.json"
# Envoy's own answer to the pod's readiness probe.
K8S_READY_PATH = "/healthz"
# TLS: the certificate and key from the chart's kubernetes.io/tls Secret (a rotated Secret is a move
# in this directory: Envoy reads the SDS file, and the files it names, again), the SDS file from a
# ConfigMap of the chart.
K8S_TLS_DIR = "/etc/runtrack/tls"
K8S_TLS_SDS = "/etc/runtrack/tls-sds/sds.yaml"
K8S_TLS_PORT = 8443
# Envoy's /stats/prometheus for the cluster's Prometheus (the chart's pod annotations name it).
K8S_STATS_PORT = 9902


@dataclass(frozen=True)
class ImagePaths:
    """Where the Envoy image keeps the built web page and the generated files (the descriptor set,
    the OpenAPI document): see deploy/images/README.md."""

    web_dist: str = "/srv/runtrack/web/dist"
    generated: str = "/srv/runtrack/generated"


def k8s_layout(*, remote_jwks: bool = False, paths: ImagePaths = ImagePaths()) -> Layout:
    """The same Envoy in a pod: listening on every interface, replicas found through their headless
    Services' DNS names, the page and descriptor set from the image, the JWKS from the chart's mount
    (or fetched from the identity provider when `remote_jwks`)."""
    remote = RemoteJwks(url=JWKS_URL, host=JWKS_HOST, port=JWKS_PORT, ca_file=JWKS_CA_FILE) if remote_jwks else None
    return Layout(
        listen_address="0.0.0.0",
        descriptor_set=f"{paths.generated}/{DESCRIPTOR_SET_NAME}",
        dns=DnsDiscovery(f"{{cluster}}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}", REPLICA_PORT),
        ready_path=K8S_READY_PATH,
        static_files=static_files(paths.web_dist, paths.generated),
        auth=Auth(
            issuer=JWT_ISSUER,
            audience=JWT_AUDIENCE,
            jwks_file=K8S_JWKS_FILE,
            remote_jwks=remote,
            link_jwks_file=K8S_LIVE_JWKS_FILE,
        ),
        tls=Tls(K8S_TLS_PORT, K8S_TLS_SDS, K8S_TLS_DIR),
        plaintext_address=PLAINTEXT_ADDRESS,
        limits=K8S_LIMITS,
        tracing=K8S_TRACING,
        stats_port=K8S_STATS_PORT,
        # The chart's envoy.resources.limits.memory is 256Mi: shedding starts well before the kill.
        max_heap_bytes=200 * 1024 * 1024,
    )


def render_k8s(*, remote_jwks: bool = False, paths: ImagePaths = ImagePaths()) -> dict[str, Any]:
    return render(k8s_layout(remote_jwks=remote_jwks, paths=paths))


HEADER = "# Generated by scripts/gen-envoy from edge/config.py; do not edit by hand.\n"
K8S_HEADER = HEADER + (
    "# The chart loads it into the envoy ConfigMap and replaces the __UPPERCASE__ placeholders with the release's\n"
    "# namespace, cluster domain, token issuer and audience (and the JWKS URL's parts).\n"
)


def to_yaml(doc: dict[str, Any], header: str = HEADER) -> str:
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)
