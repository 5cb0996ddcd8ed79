"""Post-process: the model's answer becomes a title and safe HTML, or the job fails for good.

Models answer in Markdown, HTML or a mix, so the text is first rendered as CommonMark with raw
HTML passed through (``markdown-it-py``), then *everything* is sanitised by an allow-list
(``nh3``, the Python binding of the Rust ``ammonia`` sanitiser): no scripts, styles, event
handlers, iframes or ``javascript:`` links can reach WordPress, whatever the model was tricked
into writing.  The first level-1 heading becomes the post's title (the input's title otherwise).
"""

from __future__ import annotations

import html
import re
from typing import Any

import nh3
from markdown_it import MarkdownIt

from shared.errors import PermanentError

from .ingest import MAX_TITLE, clean_text

#: WordPress stores ``post_content`` in a LONGTEXT, but an article this long is a runaway answer.
MAX_HTML_CHARS = 200_000

#: What an article may contain: text structure, emphasis, links, quotes, code, simple tables.
ALLOWED_TAGS = {
    "p", "br", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "u", "s", "del", "ins",
    "sub", "sup", "mark", "small", "blockquote", "q", "cite", "ul", "ol", "li", "dl", "dt", "dd",
    "a", "code", "pre", "kbd", "hr", "abbr", "table", "thead", "tbody", "tr", "th", "td", "caption",
    "figure", "figcaption",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "th": {"scope"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}

_MARKDOWN = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
_H1 = re.compile(r"<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def sanitise(fragment: str) -> str:
    """Allow-listed HTML only; links get ``rel="noopener noreferrer nofollow"``."""
    return nh3.clean(
        fragment,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    ).strip()


def plain_text(fragment: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", fragment)).split())


def render(draft: str, *, fallback_title: str, min_words: int) -> dict[str, Any]:
    """``{"title", "html", "words"}`` from the model's text; PermanentError when unusable."""
    if not isinstance(draft, str) or not draft.strip():
        raise PermanentError("the draft is empty")
    rendered = _MARKDOWN.render(draft.strip())
    title = ""
    heading = _H1.search(rendered)
    if heading:
        title = plain_text(sanitise(heading.group(1)))
        rendered = rendered[: heading.start()] + rendered[heading.end() :]
    title = clean_text(title, keep_paragraphs=False) or clean_text(fallback_title, keep_paragraphs=False)
    if not title:
        raise PermanentError("the article has no title")
    if len(title) > MAX_TITLE:
        title = title[: MAX_TITLE - 1].rstrip() + "…"
    body = sanitise(rendered)
    words = len(plain_text(body).split())
    if words < min_words:
        raise PermanentError(f"the article has {words} words; at least {min_words} are required")
    if len(body) > MAX_HTML_CHARS:
        raise PermanentError(f"the article's HTML is longer than {MAX_HTML_CHARS} characters")
    return {"title": title, "html": body, "words": words}
