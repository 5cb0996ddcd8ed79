"""Operator commands for API tokens. The plaintext of a token is printed once, at minting.

python -m shared.auth.cli mint --tenant acme --role editor [--name ci] [--ttl 30d]
python -m shared.auth.cli list [--tenant acme]      # JSON lines; never a secret
python -m shared.auth.cli revoke TOKEN_ID

``mint`` writes the token alone on stdout (so ``TOKEN=$(... mint ...)`` works) and what it is,
with the warning, on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict

from shared.auth.scopes import Role
from shared.auth.tokens import TokenStore
from shared.config import Settings
from shared.redis_client import redis_client

_DURATION = re.compile(r"(?P<n>\d+)(?P<unit>[smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(raw: str) -> int:
    """``90`` / ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds."""
    match = _DURATION.fullmatch(raw.strip())
    if match is None or int(match["n"]) == 0:
        raise argparse.ArgumentTypeError(f"bad duration {raw!r} (want e.g. 3600, 15m, 12h, 30d)")
    return int(match["n"]) * _UNIT_S[match["unit"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.auth.cli", description="API token operations.")
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="create a token and print it once")
    mint.add_argument("--tenant", required=True)
    mint.add_argument("--role", required=True, choices=[role.value for role in Role])
    mint.add_argument("--name", default="")
    mint.add_argument("--ttl", type=parse_duration, default=None, help="lifetime, e.g. 30d (default: none)")
    listing = sub.add_parser("list", help="show tokens as JSON lines (never their secret)")
    listing.add_argument("--tenant", default=None)
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    store = TokenStore(redis_client(settings), settings.namespace)
    if args.command == "mint":
        try:
            plaintext, info = store.mint(args.tenant, args.role, name=args.name, ttl_s=args.ttl)
        except ValueError as error:
            parser.error(str(error))
        expiry = "never expires" if info.expires_at is None else f"expires in {args.ttl}s"
        print(
            f"minted token {info.token_id} for tenant {info.tenant}, role {info.role.value}, {expiry}.\n"
            "WARNING: this is the only time the token is shown; store it in a secret manager now.",
            file=sys.stderr,
        )
        print(plaintext)
    elif args.command == "list":
        for info in store.list(args.tenant):
            print(json.dumps(asdict(info)))
    else:
        if not store.revoke(args.token_id):
            known = store.info(args.token_id)
            print(f"{args.token_id}: {'already revoked' if known else 'no such token'}", file=sys.stderr)
            return 0 if known else 1
        print(f"revoked {args.token_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
