"""The archiver: moves the buffer to S3, one gzip JSON Lines object per tenant per flush.

Any worker process may run it; a lock in Redis lets one flush at a time and spaces flushes by
``interval_s``, so the objects stay few whatever the number of processes. A flush reads the
oldest ``batch`` records, PUTs one object per tenant, records where each record landed (one HSET
per tenant and hour), and only then deletes the records from the buffer. A flush that dies half
way leaves its records in the buffer; the next flush writes them again, under the same object key
when it reads the same batch (a full one), else into a new object: a record can then be archived
twice, always with the same ``id``.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import redis

from shared.payloads import PayloadStore

from .buffer import buffer_key
from .record import hour_of

log = logging.getLogger("pressline.archive")


def location_key(namespace: str, tenant: str, hour: str) -> str:
    """Where the records of one tenant and UTC hour landed: record id -> ``<object key>\\n<line>``."""
    return f"{namespace}.archive.loc.{tenant}.{hour}"


def object_key(tenant: str, first_id: str, last_id: str) -> str:
    """Named by the batch's first and last buffer ids: the same batch always has the same key."""
    at = datetime.fromtimestamp(int(first_id.split("-")[0]) / 1000, UTC)
    return f"{tenant}/archive/{at:%Y/%m/%d/%H}/{first_id}_{last_id}.jsonl.gz"


def compress(body: bytes) -> bytes:
    """gzip with mtime=0: the same batch gives the same bytes, so a repeated flush rewrites one object."""
    return gzip.compress(body, mtime=0)


@dataclass(frozen=True)
class FlushResult:
    records: int
    objects: int
    full: bool  # the batch was full: more may be waiting


class Archiver:
    """Flushes the archive buffer to S3.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      payloads(PayloadStore): The bucket the objects go to.
      batch(int): Most records per flush.
      interval_s(float): At most one flush per interval (unless a batch was full).
      lock_s(float): How long a flush may take before another may start (one that takes longer
        may meet a second flush of the same records: harmless, see above).
      index_ttl_s(int): How long the location index is kept (the job records' lifetime).
      compress(Callable[[bytes], bytes]): Turns a batch's lines into the object's bytes (a gevent
        process hands it to a native thread, so its greenlets keep running meanwhile).
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        payloads: PayloadStore,
        *,
        batch: int = 5000,
        interval_s: float = 5.0,
        lock_s: float = 15.0,
        index_ttl_s: int = 7 * 24 * 3600,
        compress: Callable[[bytes], bytes] = compress,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.payloads = payloads
        self.batch = batch
        self.interval_s = interval_s
        self.lock_s = lock_s
        self.index_ttl_s = index_ttl_s
        self.compress = compress
        self.buffer = buffer_key(namespace)
        self.lock = f"{{{namespace}:archive}}.flush-lock"

    def flush(self) -> FlushResult | None:
        """One flush, if no other is running or ran within the interval; None when skipped."""
        token = f"{os.getpid()}:{uuid.uuid4().hex}"  # who flushes, for an operator (and a test)
        if not self.client.set(self.lock, token, nx=True, px=int(self.lock_s * 1000)):
            return None
        result = FlushResult(0, 0, False)
        try:
            result = self._flush()
            return result
        finally:
            # A full batch: let the next flush start at once; else keep flushes an interval apart.
            if result.full:
                self.client.delete(self.lock)
            else:
                self.client.set(self.lock, token, px=max(1, int(self.interval_s * 1000)))

    def drain(self) -> int:
        """Flush until the buffer is empty (a worker's shutdown, tests); the records moved."""
        moved = 0
        while True:
            self.client.delete(self.lock)
            result = self.flush()
            if result is None or result.records == 0:
                return moved
            moved += result.records

    def _flush(self) -> FlushResult:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(self.buffer, count=self.batch)
        )
        if not entries:
            return FlushResult(0, 0, False)
        ids = [entry_id.decode() for entry_id, _ in entries]
        by_tenant: dict[str, list[tuple[str, int, bytes]]] = defaultdict(list)
        for _, fields in entries:
            tenant = PayloadStore.tenant_prefix(fields[b"t"].decode())
            by_tenant[tenant].append((fields[b"i"].decode(), int(fields[b"a"]), fields[b"r"]))
        locations: dict[str, dict[str, str]] = defaultdict(dict)
        for tenant, records in by_tenant.items():
            key = object_key(tenant, ids[0], ids[-1])
            body = b"".join(raw + b"\n" for _, _, raw in records)  # each line as the worker wrote it
            # mtime=0: the same batch gives the same bytes, so a repeated flush rewrites one object.
            self.payloads.put(
                key, gzip.compress(body, compresslevel=6, mtime=0), content_type="application/gzip"
            )
            for line, (record_id, at_ms, _) in enumerate(records, start=1):
                locations[location_key(self.namespace, tenant, hour_of(at_ms))][record_id] = f"{key}\n{line}"
        with self.client.pipeline(transaction=False) as pipe:
            for index_key, mapping in locations.items():
                pipe.hset(index_key, mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(index_key, self.index_ttl_s)
            pipe.xdel(self.buffer, *ids)
            pipe.execute()
        return FlushResult(len(entries), len(by_tenant), len(entries) >= self.batch)


class ArchiverThread:
    """Runs :meth:`Archiver.flush` in the background of a worker process until stopped.

    Parameters:
      archiver(Archiver)
    """

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pressline-archiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        failing = False
        while True:
            full = False
            try:
                result = self.archiver.flush()
                full = bool(result and result.full)
                if failing:
                    log.info("the archive flushes again")
                failing = False
            except Exception:
                if not failing:  # once per outage: the records wait in the buffer
                    log.exception("archive flush failed; its records stay in the buffer")
                failing = True
            # Jittered, so the processes that share the buffer do not all ask at once.
            wait = 0.0 if full else self.archiver.interval_s * random.uniform(0.5, 1.0)
            if self._stop.wait(wait):
                return
