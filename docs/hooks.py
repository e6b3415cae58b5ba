"""mkdocs hook: the front page is README.md.

``docs/index.md`` holds only a marker line; this hook puts the README's text in its place, with
the README's links into ``docs/`` made relative to the docs directory so that mkdocs resolves and
checks them like any other page link.
"""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- README.md -->"
_DOCS_LINK = re.compile(r"\]\(docs/")


def on_page_markdown(markdown, page, **kwargs):
    if page.file.src_uri != "index.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/index.md must contain {MARKER!r}")
    return markdown.replace(MARKER, _DOCS_LINK.sub("](", README.read_text(encoding="utf-8")))
