"""Operator command: a job's archived stage records (input, output or error), read back from S3.

python -m shared.archive.cli show JOB_ID            # a line per stage: where its record is
python -m shared.archive.cli show JOB_ID --records  # the records themselves, as JSON lines
python -m shared.archive.cli flush                  # move the whole buffer to S3 now

A record still waiting in the buffer (flushed every ``PRESSLINE_ARCHIVE_FLUSH_S``) shows as
``buffered``. Exit status 1 when there is no such job.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from shared.aws import aws_client
from shared.config import Settings
from shared.jobs import JobStore, valid_job_id
from shared.payloads import PayloadStore
from shared.redis_client import redis_client

from .flusher import Archiver
from .reader import ArchiveReader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.archive.cli", description="The job archive.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="where each stage's record of a job is")
    show.add_argument("job_id")
    show.add_argument("--records", action="store_true", help="print the records themselves (JSON lines)")
    sub.add_parser("flush", help="move everything buffered to S3 now")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    client = redis_client(settings)
    payloads = PayloadStore(aws_client("s3", settings), settings.payload_bucket)
    if args.command == "flush":
        moved = Archiver(client, settings.namespace, payloads, index_ttl_s=settings.job_ttl_s).drain()
        print(f"{moved} records archived", file=sys.stderr)
        return 0

    record = JobStore(client, settings.namespace, settings.job_ttl_s).get(args.job_id)
    if not valid_job_id(args.job_id) or record is None:
        print(f"no job {args.job_id!r}", file=sys.stderr)
        return 1
    stages = [stage for stage in record.stages if stage.archive]
    reader = ArchiveReader(client, settings.namespace, payloads)
    locations = reader.locate(record.tenant, [stage.archive or "" for stage in stages])
    for stage, where in zip(stages, locations, strict=True):
        if args.records:
            found = reader.read(where)
            print(json.dumps(asdict(found) if found else {"id": where.record_id, "buffered": True}))
        else:
            place = f"{where.uri} line {where.line}" if where.archived else "buffered"
            print(f"{stage.name}\t{stage.state.value}\t{where.record_id}\t{place}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
