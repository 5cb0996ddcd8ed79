"""A post as Pressline knows it after writing it: enough to link to it and to find it again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["REF_META", "TRACE_META", "PostRef"]

#: Post meta keys registered by Pressline's mu-plugin (infra/wordpress_site/pressline.php).
REF_META = "pressline_external_ref"
TRACE_META = "pressline_trace_id"


@dataclass(frozen=True)
class PostRef:
    """One WordPress post.

    Parameters:
      id(int): WordPress's post id.
      status(str): draft, pending, publish, ...
      link(str): Its permalink.
      created(bool): True when the call that returned it created the post.
    """

    id: int
    status: str
    link: str
    created: bool

    @classmethod
    def from_post(cls, post: dict[str, Any], *, created: bool) -> PostRef:
        return cls(
            id=int(post["id"]),
            status=str(post.get("status", "")),
            link=str(post.get("link", "")),
            created=created,
        )
