"""Structured logs: one JSON object per line, stamped with the current trace, with secrets redacted.

Functions and workers log the same way, so one query finds a job's lines across both, and the
trace id leads from a log line to its trace.  Redaction happens in a handler filter, before any
formatting, so no handler attached alongside can see the secret either.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from shared.config import Settings

from .loki import LokiHandler

__all__ = ["REDACTED", "JsonFormatter", "RedactSecrets", "TraceContext", "configure_logging", "redact"]

REDACTED = "[REDACTED]"

#: Names of fields whose values are secrets (``max_tokens`` and ``tokenizer`` are not).
SECRET_KEY = re.compile(
    r"secret|passw(?:or)?d|pwd|authori[sz]ation|api[_-]?key|private[_-]?key|credential|cookie|token(?!s|iz)",
    re.IGNORECASE,
)

#: ``key=value``, ``key: value`` and ``"key": "value"`` pairs with a secret-looking key, in free text.
_TEXT_PAIR = re.compile(
    r"(?P<key>[\w.-]*(?:" + SECRET_KEY.pattern + r")[\w.-]*)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>(?:(?:Bearer|Basic|Token)\s+)?[^\s\"',;&)}\]]+)",
    re.IGNORECASE,
)

#: Secrets recognisable by their shape alone.
_TEXT_SECRETS = (
    re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"),  # webhook signing secrets
    re.compile(r"\bsk-[A-Za-z0-9_-]{10,}"),  # OpenAI-style API keys
    re.compile(r"\b(?:ghp|gho|ghs|github_pat|xox[abprs])_?[A-Za-z0-9_-]{16,}"),  # GitHub, Slack
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWTs
    re.compile(r"(?<=\bBearer )[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
)

#: ``scheme://user:password@host`` (a Redis or database URL) keeps only the user.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with secret-looking substrings (and the ``known`` secret values) replaced."""
    for value in known:
        text = text.replace(value, REDACTED)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED + "@", text)
    text = _TEXT_PAIR.sub(lambda m: m["key"] + m["sep"] + REDACTED, text)
    for pattern in _TEXT_SECRETS:
        text = pattern.sub(REDACTED, text)
    return text


def redact(value: Any, known: Iterable[str] = (), _depth: int = 0) -> Any:
    """A JSON-ready copy of ``value``: secret-named keys blanked, strings scrubbed, others as text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if _depth > 6:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if SECRET_KEY.search(str(k)) and v is not None else redact(v, known, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, known, _depth + 1) for v in value]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return redact_text(value if isinstance(value, str) else str(value), known)


class RedactSecrets(logging.Filter):
    """Rewrites each record so nothing that looks like a secret reaches a handler: the formatted
    message, ``extra=`` fields (secret-named keys are blanked whole), traceback and stack text.

    Parameters:
      known(Iterable[str]): Secret values to blank wherever they appear (e.g. the webhook secret).
    """

    def __init__(self, known: Iterable[str | None] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is blanked whole; very short ones would
        # blank innocent text.
        self.known = sorted((k for k in known if k and len(k) >= 6), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = redact_text(record.getMessage(), self.known)
        except Exception:  # a broken format string: keep the template, drop the arguments
            record.msg = redact_text(str(record.msg), self.known)
        record.args = None
        for key in record.__dict__.keys() - _RECORD_FIELDS:
            value = record.__dict__[key]
            record.__dict__[key] = REDACTED if SECRET_KEY.search(key) else redact(value, self.known)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.known)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.known)
        return True


class TraceContext(logging.Filter):
    """Stamps ``trace_id`` and ``span_id`` of the span current where the record was made."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, ``trace_id`` and
    ``span_id`` when stamped, ``exc_info``/``stack_info`` when present, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("trace_id", "span_id"):
            if key in record.__dict__:
                payload[key] = record.__dict__[key]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc_info"] = record.exc_text
        if record.stack_info:
            payload["stack_info"] = record.stack_info
        for key in sorted(record.__dict__.keys() - _RECORD_FIELDS):
            payload.setdefault(key, record.__dict__[key])
        return json.dumps(payload, default=str, ensure_ascii=False)


#: Libraries whose INFO lines are noise at Pressline's volume (their warnings still show).
QUIET_LOGGERS = ("httpx", "httpcore")


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record of this process as a JSON line to ``stream`` (default stderr), and
    to Loki too when ``settings.loki_url`` is set (see :mod:`.loki`; never blocking the caller).

    Replaces the root logger's handlers (e.g. the plain-text one the dramatiq CLI installs, whose
    output goes to the same pipe), so each record is written once.  Returns the stream handler.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if settings.loki_url:
        handlers.append(
            LokiHandler(
                settings.loki_url,
                settings.otel_service_name,
                max_queue=settings.loki_queue_lines,
                flush_interval_s=settings.loki_flush_interval_s,
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, LokiHandler):
            old.close()  # a reconfiguration: flush the previous Loki handler's lines
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        handler.addFilter(TraceContext())
        handler.addFilter(RedactSecrets(known=[settings.hmac_webhook_secret]))
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # httpx/httpcore log every request at INFO: one line per upstream call, WordPress call and
    # Loki push, with nothing our own spans and access lines don't already say.
    for chatty in QUIET_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    return handlers[0]
