"""One writer for the sections of docs/performance.md that a benchmark rewrites alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

WHAT_WAS_CHANGED = "\n## What was changed for this"


def write_section(
    doc: Path, section: str, title: str, before: Sequence[str] = (WHAT_WAS_CHANGED,)
) -> None:
    """Replace the section that starts with ``title`` (up to the next ``## `` heading) by
    ``section``; without one, add it before the first of ``before`` found in ``doc``, or
    at the end."""
    text = doc.read_text() if doc.exists() else ""
    if title in text:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + ("\n" + text[end:] if end != -1 else "\n")
    else:
        for anchor in before:
            if anchor in text:
                at = text.index(anchor) + 1
                text = text[:at] + section + "\n\n" + text[at:]
                break
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)
