"""One producer process: ``actor.send`` in a loop, as fast as it can or paced at ``--rate``.

Run by the bench as ``python -m bench.producer --actor noop --n 20000``; prints one JSON line
with the wall-clock start and end of the send loop (process start-up is not timed).
"""

from __future__ import annotations

import argparse
import json
import time

from bench import actors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actor", choices=["noop", "cpu_2ms", "stamped"], default="noop")
    parser.add_argument("--n", type=int, default=20_000, help="messages to send")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s (0: as fast as possible)")
    args = parser.parse_args()

    actor = getattr(actors, args.actor)
    start = time.time()
    began = time.perf_counter()
    for i in range(args.n):
        if args.rate > 0:
            # Paced on an absolute schedule so a slow send does not stretch the whole run.
            pause = began + i / args.rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        if args.actor == "stamped":
            actor.send(time.time())
        else:
            actor.send()
    elapsed = time.perf_counter() - began
    print(
        json.dumps({"sent": args.n, "start": start, "end": start + elapsed, "elapsed": elapsed}), flush=True
    )


if __name__ == "__main__":
    main()
