import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunOverview(_message.Message):
    __slots__ = ("start_time", "end_time", "distance_m", "moving_time", "elevation_gain_m", "point_count", "avg_heart_rate_bpm", "polyline")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    MOVING_TIME_FIELD_NUMBER: _ClassVar[int]
    ELEVATION_GAIN_M_FIELD_NUMBER: _ClassVar[int]
    POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    AVG_HEART_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    POLYLINE_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    distance_m: float
    moving_time: _duration_pb2.Duration
    elevation_gain_m: float
    point_count: int
    avg_heart_rate_bpm: float
    polyline: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., distance_m: _Optional[float] = ..., moving_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., elevation_gain_m: _Optional[float] = ..., point_count: _Optional[int] = ..., avg_heart_rate_bpm: _Optional[float] = ..., polyline: _Optional[str] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id", "user_id", "overview")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OVERVIEW_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    user_id: str
    overview: RunOverview
    def __init__(self, run_id: _Optional[str] = ..., user_id: _Optional[str] = ..., overview: _Optional[_Union[RunOverview, _Mapping]] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "user_id", "overview", "elapsed_time", "avg_pace_s_per_km", "stopped_at", "track_url")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OVERVIEW_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_TIME_FIELD_NUMBER: _ClassVar[int]
    AVG_PACE_S_PER_KM_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACK_URL_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    user_id: str
    overview: RunOverview
    elapsed_time: _duration_pb2.Duration
    avg_pace_s_per_km: float
    stopped_at: _timestamp_pb2.Timestamp
    track_url: str
    def __init__(self, run_id: _Optional[str] = ..., user_id: _Optional[str] = ..., overview: _Optional[_Union[RunOverview, _Mapping]] = ..., elapsed_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., avg_pace_s_per_km: _Optional[float] = ..., stopped_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., track_url: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetUserStatsRequest(_message.Message):
    __slots__ = ("user_id", "time_zone", "weeks")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    WEEKS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    time_zone: str
    weeks: int
    def __init__(self, user_id: _Optional[str] = ..., time_zone: _Optional[str] = ..., weeks: _Optional[int] = ...) -> None: ...

class WeekStats(_message.Message):
    __slots__ = ("week_start", "run_count", "distance_m", "moving_time", "elevation_gain_m")
    WEEK_START_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    MOVING_TIME_FIELD_NUMBER: _ClassVar[int]
    ELEVATION_GAIN_M_FIELD_NUMBER: _ClassVar[int]
    week_start: str
    run_count: int
    distance_m: float
    moving_time: _duration_pb2.Duration
    elevation_gain_m: float
    def __init__(self, week_start: _Optional[str] = ..., run_count: _Optional[int] = ..., distance_m: _Optional[float] = ..., moving_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., elevation_gain_m: _Optional[float] = ...) -> None: ...

class UserStats(_message.Message):
    __slots__ = ("user_id", "weeks", "total_runs", "total_distance_m")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    WEEKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RUNS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    weeks: _containers.RepeatedCompositeFieldContainer[WeekStats]
    total_runs: int
    total_distance_m: float
    def __init__(self, user_id: _Optional[str] = ..., weeks: _Optional[_Iterable[_Union[WeekStats, _Mapping]]] = ..., total_runs: _Optional[int] = ..., total_distance_m: _Optional[float] = ...) -> None: ...
