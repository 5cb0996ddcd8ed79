"""What waking up costs on this host: the CPU a streaming relay pays per chunk before any work.

A proxy that relays an SSE stream wakes at least once per chunk (the socket read), and once more
when a reader thread hands the chunk to the thread that writes it.  On virtual machines a wake-up
can cost tens of microseconds of CPU, and it varies from host to host — which moves the proxy
benchmark's CPU-per-stream figure without a line of the proxy changing.  Run this beside
``make bench-proxy`` to tell the two apart: ``make bench-wakeup`` (or
``.venv/bin/python -m bench.wakeup_cost --n 300``).

Each case does ``n`` events 10 ms apart and reports process CPU per event, in microseconds:

* sleep: one thread wakes from ``time.sleep`` (the floor: a timer wake-up);
* socket read: a writer thread sends, the main thread wakes in ``recv`` (includes the writer's sleep);
* queue.Queue / queue.SimpleQueue hand-over: a thread wakes from sleep and hands an item over, the
  main thread wakes in ``get`` (includes the producer's sleep).

Prints a table; writes JSON to ``bench/results/wakeup-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GAP_S = 0.01


def _cpu_per_event_us(run: Callable[[int], None], n: int) -> float:
    started = time.process_time()
    run(n)
    return (time.process_time() - started) / n * 1e6


def sleep_wakeups(n: int) -> None:
    for _ in range(n):
        time.sleep(GAP_S)


def socket_reads(n: int) -> None:
    writer_end, reader_end = socket.socketpair()

    def write() -> None:
        with writer_end:
            for _ in range(n):
                time.sleep(GAP_S)
                writer_end.sendall(b"x" * 200)

    thread = threading.Thread(target=write)
    thread.start()
    with reader_end:
        while reader_end.recv(65536):
            pass
    thread.join()


def hand_overs(make: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        items = make()

        def produce() -> None:
            for i in range(n):
                time.sleep(GAP_S)
                items.put(i)
            items.put(None)

        thread = threading.Thread(target=produce)
        thread.start()
        while items.get(timeout=30) is not None:
            pass
        thread.join()

    return run


CASES: dict[str, Callable[[int], None]] = {
    "sleep": sleep_wakeups,
    "socket read": socket_reads,
    "queue.Queue hand-over": hand_overs(queue.Queue),
    "queue.SimpleQueue hand-over": hand_overs(queue.SimpleQueue),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=300, help="events per case")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (the table shows medians)")
    args = parser.parse_args(argv)
    samples = {
        name: sorted(_cpu_per_event_us(run, args.n) for _ in range(args.reps)) for name, run in CASES.items()
    }
    print(f"{'case':<30} {'CPU us/event (median)':>22} {'min':>8} {'max':>8}")
    for name, values in samples.items():
        print(f"{name:<30} {values[len(values) // 2]:>22.1f} {values[0]:>8.1f} {values[-1]:>8.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"wakeup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"n": args.n, "gap_s": GAP_S, "cpu_us_per_event": samples}, indent=2))
    print(f"JSON: {path.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
