"""What the API accepts, in one table: the services check requests against these values, and the
OpenAPI generator (devstack/gen_protos.py) writes them into the document, so the two cannot part.

`FIELDS` holds the bounds a JSON schema states (minimum/maximum, lengths, patterns, enums), per
request message and field (its JSON name). `RULES` holds those it cannot state: a field compared
with another, with the clock, with the server's data; the document lists them per operation in an
`x-runtrack-rules` extension, each with the field and the rule as an INVALID_ARGUMENT names them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

# SetPrivacyZones.
MAX_ZONES = 10
MIN_RADIUS_M = 100.0
MAX_RADIUS_M = 5000.0
# StopRun's overview.
MAX_POLYLINE_CHARS = 200_000
# An encoded polyline is made of the characters ? (63) to ~ (126): a StopRun body stays under
# the JSON API's 1 MiB with the longest one.
POLYLINE_PATTERN = r"^[?-~]*$"
POLYLINE_RULE = "an encoded polyline: characters ? to ~ (ASCII 63 to 126) only"
# A run's name (UpdateRun, and the name an imported file gives).
MAX_NAME_CHARS = 200
# A user_id as a request names it ("me", or a runner's id).
MAX_USER_ID_CHARS = 200
# A user id or a link id in a path, as the API makes them (a token's subject; a link token's id):
# no "/", "%", ":", space or control character, which a path would carry only escaped.
USER_ID_PATTERN = r"^[A-Za-z0-9._~@|+-]+$"
USER_ID_OR_EMPTY_PATTERN = r"^[A-Za-z0-9._~@|+-]*$"
USER_ID_RULE = "letters, digits and . _ ~ @ | + - only"
LINK_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
# CreateLiveLink's expire_time.
MAX_LINK_LIFETIME = dt.timedelta(days=7)

# A name: at least one character that is not a space, and no control character or line break
# (Unicode Cc, Zl, Zp); the service trims the spaces around it.
_NAME_CHAR = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
NAME_PATTERN = rf"^{_NAME_CHAR}*[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]{_NAME_CHAR}*$"
# A protobuf Duration that is not negative, as JSON carries it ("1800s", "0.5s"), within its range
# (at most 315,576,000,000 seconds).
NON_NEGATIVE_DURATION = (
    r"^(?:0|[1-9][0-9]{0,10}|[12][0-9]{11}|30[0-9]{10}|31[0-4][0-9]{9}|315[0-4][0-9]{8}|3155[0-6][0-9]{7}"
    r"|31557[0-5][0-9]{6}|315576000000)(?:\.[0-9]{1,9})?s$"
)
# A protobuf Timestamp as JSON carries it: RFC 3339 within its range, years 0001 to 9999 in UTC
# (in years 0001 and 9999 only in UTC, `Z`: an offset there may leave the range).
_DAY_AND_TIME = (
    r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
)
_INNER_YEARS = r"(?:000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
TIMESTAMP_PATTERN = (
    rf"^(?:{_INNER_YEARS}{_DAY_AND_TIME}(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])|(?:0001|9999){_DAY_AND_TIME}Z)$"
)
# UpdateRun's mask (JSON names, comma-separated).
UPDATABLE_JSON = ("visibility", "name", "shareHealth")
UPDATE_MASK_PATTERN = rf"^(?:{'|'.join(UPDATABLE_JSON)})(?:,(?:{'|'.join(UPDATABLE_JSON)}))*$"
WGS84_LATITUDE = {"minimum": -90.0, "maximum": 90.0}
WGS84_LONGITUDE = {"minimum": -180.0, "maximum": 180.0}

# Message (full name) -> field (JSON name) -> JSON schema keywords.
FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "runtrack.v1.PrivacyZone": {
        "latitude": WGS84_LATITUDE,
        "longitude": WGS84_LONGITUDE,
        "radiusM": {"minimum": MIN_RADIUS_M, "maximum": MAX_RADIUS_M},
    },
    "runtrack.v1.SetPrivacyZonesRequest": {"zones": {"maxItems": MAX_ZONES}},
    "runtrack.v1.RunOverview": {
        "distanceM": {"minimum": 0.0},
        "movingTime": {"pattern": NON_NEGATIVE_DURATION},
        "elevationGainM": {"minimum": 0.0},
        "avgHeartRateBpm": {"minimum": 0.0},
        "polyline": {"maxLength": MAX_POLYLINE_CHARS, "pattern": POLYLINE_PATTERN},
    },
    # Empty in a body: the caller.
    "runtrack.v1.StopRunRequest": {"userId": {"maxLength": MAX_USER_ID_CHARS, "pattern": USER_ID_OR_EMPTY_PATTERN}},
    "runtrack.v1.ExportTrackRequest": {"format": {"enum": ["", "gpx", "tcx"]}},
    "runtrack.v1.UpdateRunRequest": {"updateMask": {"pattern": UPDATE_MASK_PATTERN}},
    # UpdateRun's body (RunChange in the document): what the owner can change.
    "runtrack.v1.Run": {
        "name": {"maxLength": MAX_NAME_CHARS, "pattern": NAME_PATTERN},
        "visibility": {"enum": ["PRIVATE", "PUBLIC"]},
    },
}


@dataclass(frozen=True)
class Rule:
    """A rule the document cannot state as a schema: `id` names it for tools, `field` is the
    request field (as a FieldViolation names it) and `rule` what it must be."""

    id: str
    field: str
    rule: str

    def doc(self) -> dict[str, str]:
        return {"id": self.id, "field": self.field, "rule": self.rule}


IANA_TIME_ZONE = "an IANA time zone name (Europe/Paris) or empty"
PAGE_TOKEN = "empty, or the next_page_token of the previous page of the same list"
END_AFTER_START = "must not be before overview.start_time"
MOVING_WITHIN_ELAPSED = "must not be longer than end_time - start_time"
EXPIRE_IN_FUTURE = "must be in the future"
EXPIRE_WITHIN = "must be at most 7 days from now"
WEBHOOK_URL = "an https URL (http only in development) to a host on the public internet"
MASK_NAMES_SET_FIELDS = (
    "each field it names is set in the body (visibility PRIVATE or PUBLIC, a name); "
    "without a mask, the body sets at least one of them (share_health: true)"
)
ACTIVITY_FILE = "a GPX 1.1, TCX or FIT file with at least one point, at most 16 MiB"

HEADER_NAMES = "a header's name is letters, digits, _ - and . only (a gRPC metadata key)"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
# Rules of every request.
DOCUMENT_RULES = (Rule("header-names", "headers", HEADER_NAMES),)

# Operation (`Service_Method`) -> the rules of its request the schema cannot state.
RULES: dict[str, tuple[Rule, ...]] = {
    "SummaryService_StopRun": (
        Rule("end-after-start", "overview.end_time", END_AFTER_START),
        Rule("moving-within-elapsed", "overview.moving_time", MOVING_WITHIN_ELAPSED),
        Rule("time-zone", "time_zone", IANA_TIME_ZONE),
    ),
    "SummaryService_GetUserStats": (Rule("time-zone", "time_zone", IANA_TIME_ZONE),),
    "SummaryService_ListRuns": (Rule("page-token", "page_token", PAGE_TOKEN),),
    "TrackingService_GetTrack": (Rule("page-token", "page_token", PAGE_TOKEN),),
    "TrackingService_CreateLiveLink": (
        Rule("expire-time", "expire_time", f"{EXPIRE_IN_FUTURE}, and {EXPIRE_WITHIN}"),
        Rule("webhook-url", "webhook_url", WEBHOOK_URL),
    ),
    "SummaryService_UpdateRun": (Rule("update-mask", "update_mask", MASK_NAMES_SET_FIELDS),),
    "SummaryService_ImportRun": (
        Rule("activity-file", "body", ACTIVITY_FILE),
        Rule("time-zone", "x-runtrack-time-zone", IANA_TIME_ZONE),
    ),
}
