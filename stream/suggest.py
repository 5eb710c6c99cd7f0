""""Did you mean ...?": the one place that picks the closest valid name for an error message."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: object, valid: Iterable[object]) -> str | None:
    """The valid name closest to `name` (similar spelling, or one containing the other), or None."""
    text = str(name)
    names = [str(v) for v in valid]
    match = difflib.get_close_matches(text, names, n=1)
    if match:
        return match[0]
    if len(text) >= 3:
        lower = text.lower()
        for v in names:
            if lower in v.lower() or v.lower() in lower:
                return v
    return None


def suggest(name: object, valid: Iterable[object], listing: str | None = "valid") -> str:
    """`; did you mean 'x'?` for the closest valid name; else `; <listing>: a, b, c` (nothing when
    `listing` is None or there is nothing valid)."""
    names = [str(v) for v in valid]
    match = closest(name, names)
    if match is not None:
        return f"; did you mean {match!r}?"
    if listing is None or not names:
        return ""
    return f"; {listing}: {', '.join(names)}"


__all__ = ["closest", "suggest"]
