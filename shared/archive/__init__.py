"""The job archive: every stage run's input, output or error, kept in S3 in micro-batches.

A stage's record goes to a buffer stream in Redis in the same round trip as its job-record update
(:mod:`.buffer`); an archiver moves the buffer to S3 as one gzip JSON Lines object per tenant per
flush (:mod:`.flusher`) and indexes where each record landed; :mod:`.reader` finds a job's records
again (the API's refs and ``python -m shared.archive``).
"""

from .buffer import ArchiveBuffer
from .flusher import Archiver, FlushResult
from .reader import ArchiveReader, Location, archive_ref, parse_ref
from .record import ArchiveRecord, record_id

__all__ = [
    "ArchiveBuffer",
    "ArchiveReader",
    "ArchiveRecord",
    "Archiver",
    "FlushResult",
    "Location",
    "archive_ref",
    "parse_ref",
    "record_id",
]
