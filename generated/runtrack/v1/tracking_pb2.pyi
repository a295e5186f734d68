import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackPoint(_message.Message):
    __slots__ = ("seq", "time", "latitude", "longitude", "altitude_m", "horizontal_accuracy_m", "speed_mps", "heart_rate_bpm", "cadence_spm")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    ALTITUDE_M_FIELD_NUMBER: _ClassVar[int]
    HORIZONTAL_ACCURACY_M_FIELD_NUMBER: _ClassVar[int]
    SPEED_MPS_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    CADENCE_SPM_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    latitude: float
    longitude: float
    altitude_m: float
    horizontal_accuracy_m: float
    speed_mps: float
    heart_rate_bpm: int
    cadence_spm: int
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., altitude_m: _Optional[float] = ..., horizontal_accuracy_m: _Optional[float] = ..., speed_mps: _Optional[float] = ..., heart_rate_bpm: _Optional[int] = ..., cadence_spm: _Optional[int] = ...) -> None: ...

class RecordTrackRequest(_message.Message):
    __slots__ = ("run_id", "user_id", "points")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    user_id: str
    points: _containers.RepeatedCompositeFieldContainer[TrackPoint]
    def __init__(self, run_id: _Optional[str] = ..., user_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[TrackPoint, _Mapping]]] = ...) -> None: ...

class PointRejection(_message.Message):
    __slots__ = ("seq", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reason: str
    def __init__(self, seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordTrackResponse(_message.Message):
    __slots__ = ("run_id", "points_received", "points_stored", "points_rejected", "rejections", "contiguous_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    POINTS_STORED_FIELD_NUMBER: _ClassVar[int]
    POINTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTIGUOUS_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    points_received: int
    points_stored: int
    points_rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[PointRejection]
    contiguous_seq: int
    def __init__(self, run_id: _Optional[str] = ..., points_received: _Optional[int] = ..., points_stored: _Optional[int] = ..., points_rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[PointRejection, _Mapping]]] = ..., contiguous_seq: _Optional[int] = ...) -> None: ...

class GetTrackCursorRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class TrackCursor(_message.Message):
    __slots__ = ("run_id", "contiguous_seq", "max_seq", "point_count")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTIGUOUS_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_FIELD_NUMBER: _ClassVar[int]
    POINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    contiguous_seq: int
    max_seq: int
    point_count: int
    def __init__(self, run_id: _Optional[str] = ..., contiguous_seq: _Optional[int] = ..., max_seq: _Optional[int] = ..., point_count: _Optional[int] = ...) -> None: ...

class GetTrackRequest(_message.Message):
    __slots__ = ("run_id", "page_size", "page_token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    page_size: int
    page_token: str
    def __init__(self, run_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Track(_message.Message):
    __slots__ = ("run_id", "points", "next_page_token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    points: _containers.RepeatedCompositeFieldContainer[TrackPoint]
    next_page_token: str
    def __init__(self, run_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[TrackPoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
