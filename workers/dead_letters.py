"""Operator commands for dead letters.

python -m workers.dead_letters list ingest            # newest first, with errors
python -m workers.dead_letters requeue ingest [ID…]    # back onto the queue (all without ids)
python -m workers.dead_letters purge ingest [ID…]      # drop them (all without ids)
python -m workers.dead_letters stats                   # every queue's health
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from shared.config import QUEUES, Settings
from shared.redis_client import redis_client
from shared.streams import RedisStreamsBroker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.dead_letters", description="Dead-letter operations."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="show dead letters, newest first")
    listing.add_argument("queue")
    listing.add_argument("--count", type=int, default=20)
    for name in ("requeue", "purge"):
        action = sub.add_parser(name, help=f"{name} dead letters (all of the queue's when no ids are given)")
        action.add_argument("queue")
        action.add_argument("ids", nargs="*")
    sub.add_parser("stats", help="backlog, pending, delayed and dead counts of every queue")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    broker = RedisStreamsBroker(client=redis_client(settings), namespace=settings.namespace)
    if args.command == "list":
        for dead in broker.admin.dead_letters(args.queue, args.count):
            print(json.dumps(asdict(dead)))
    elif args.command == "requeue":
        print(f"requeued {broker.requeue_dead(args.queue, args.ids)} from {args.queue}")
    elif args.command == "purge":
        print(f"purged {broker.purge_dead(args.queue, args.ids)} from {args.queue}")
    else:
        for queue in QUEUES:
            print(json.dumps(asdict(broker.admin.stats(queue))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
