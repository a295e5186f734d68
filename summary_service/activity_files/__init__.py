"""A GPX, TCX or FIT file read into a trail: FIT with fitdecode, GPX and TCX in one streaming pass of
expat that builds only the points (no tree of the file: memory is the points, a few times the file).

Everything here is pure and bounded: the file's size and its number of points are capped, XML is
read with DTDs refused by the parser itself (no entity expansion, no external fetches), and every refusal
is an InvalidArgument on `file` that says what is wrong and where (line and column, the track
point, or the FIT record). Nothing is stored from a file that is refused.
"""

from summary_service.activity_files.common import (
    CONTENT_TYPES,
    FIT,
    GPX,
    MAX_FILE_BYTES,
    MAX_MEMORY_MULTIPLE,
    MAX_POINTS,
    TCX,
    Abandoned,
    FilePoint,
    ImportedFile,
    Parsed,
    check_size,
    sha256_of,
    sport_of,
)
from summary_service.activity_files.reading import PreparedRun, prepare, read_file

__all__ = [
    "CONTENT_TYPES",
    "FIT",
    "GPX",
    "MAX_FILE_BYTES",
    "MAX_MEMORY_MULTIPLE",
    "MAX_POINTS",
    "TCX",
    "Abandoned",
    "FilePoint",
    "ImportedFile",
    "Parsed",
    "PreparedRun",
    "check_size",
    "prepare",
    "read_file",
    "sha256_of",
    "sport_of",
]
