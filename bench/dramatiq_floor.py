"""The most throughput any broker can give a CPU-bound actor under Dramatiq's own worker.

One process, 8 worker threads, an actor that burns 2 ms of CPU: Dramatiq's in-memory StubBroker
(no I/O at all) against the Redis Streams broker.  The stub's figure is the ceiling; the gap to it
is all a broker can still win.  ``python -m bench.dramatiq_floor``
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from infra.redis_server import free_port, start_redis, stop_process
from shared.streams import RedisStreamsBroker

N = 1500
THREADS = 8


def burn_2ms() -> None:
    end = time.thread_time() + 0.002
    while time.thread_time() < end:
        pass


def measure(broker: dramatiq.Broker) -> dict[str, float]:
    actor = dramatiq.actor(broker=broker)(burn_2ms)
    for _ in range(N):
        actor.send()
    worker = Worker(broker, worker_threads=THREADS)
    cpu0, wall0 = time.process_time(), time.monotonic()
    worker.start()
    broker.join(actor.queue_name)
    worker.join()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    worker.stop()
    return {"msgs_per_s": N / wall, "cpu_us_per_msg": cpu / N * 1e6, "cpu_utilisation": cpu / wall}


def main() -> None:
    results: dict[str, dict[str, float]] = {}
    stub = StubBroker()
    stub.emit_after("process_boot")
    results["stub (in memory)"] = measure(stub)
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        redis_proc = start_redis(port, Path(scratch), durable=False)
        try:
            streams = RedisStreamsBroker(url=f"redis://127.0.0.1:{port}/0", namespace="floor")
            results["redis streams"] = measure(streams)
            streams.close()
        finally:
            stop_process(redis_proc)
    print(f"1 process x {THREADS} threads, {N} messages of a 2 ms CPU actor")
    for name, r in results.items():
        print(f"  {name:<18} {r['msgs_per_s']:7.0f} msgs/s  {r['cpu_us_per_msg']:6.0f} CPU-us/msg")
    out = Path("bench/results") / f"floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
