"""MkDocs hooks: the site's home page is the README, with its links made the site's own."""

from __future__ import annotations

import pathlib
import re
from typing import Any

_README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_LINKS = {"docs/": "", "CHANGELOG.md": "changelog.md", "CONTRIBUTING.md": "contributing.md"}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    text = _README.read_text(encoding="utf-8")
    for old, new in _LINKS.items():
        text = re.sub(r"\]\(" + re.escape(old), "](" + new, text)
    return text
