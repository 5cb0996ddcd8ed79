"""Egress control: the addresses Pressline may connect to for URLs that came from tenants' side
(a site's WordPress URL, outbound webhook endpoints), checked when a URL is registered or configured
and again on every connection, on the address actually connected to.

One concept per module: ``policy`` (address classes, the ``PRESSLINE_EGRESS_ALLOW`` allow-list,
resolution and the check) and ``transport`` (httpx clients whose connections go through the check).
"""

from .policy import (
    AllowRule,
    EgressPolicy,
    EgressRefused,
    Resolver,
    format_allow_list,
    numeric_resolver,
    parse_allow_list,
    refusal_reason,
    system_resolver,
    url_target,
)
from .transport import GuardedBackend, GuardedTransport, guarded_client

__all__ = [
    "AllowRule",
    "EgressPolicy",
    "EgressRefused",
    "GuardedBackend",
    "GuardedTransport",
    "Resolver",
    "format_allow_list",
    "guarded_client",
    "numeric_resolver",
    "parse_allow_list",
    "refusal_reason",
    "system_resolver",
    "url_target",
]
