"""The normalised form of rubric text used to decide that two items say the same thing."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Casefold, drop punctuation and symbols, collapse whitespace.

    "Clarity & Flow:" and "  clarity  flow" give the same key. Unicode-aware (NFKC first, then
    every P* and S* category character becomes a space), so "Clarity—flow" also matches.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in folded)
    return _SPACES.sub(" ", kept).strip()
