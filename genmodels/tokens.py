"""Word-piece tokenizer of the reports (pure Python): a token is a newline, a word with its leading
space, a digit with its leading space, or a punctuation mark with its leading space. Numbers are
spelled digit by digit, so a small vocabulary covers every report; joining tokens gives the text.

The token ``"\\n"`` (index 0) separates reports; generation starts from it.
"""

from __future__ import annotations

import re

_PIECE = re.compile(r"\n| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]")
START = "\n"


def split(text: str) -> list[str]:
    """The pieces of ``text``; raises ValueError if some characters are not covered (e.g. two spaces)."""
    pieces = _PIECE.findall(text)
    if "".join(pieces) != text:
        raise ValueError(f"text {text[:40]!r} has characters the tokenizer cannot split (runs of spaces, tabs)")
    return pieces


class Vocab:
    """Token <-> index."""

    def __init__(self, tokens: list[str]):
        if not tokens or tokens[0] != START:
            raise ValueError("a vocabulary starts with the newline token")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> "Vocab":
        seen = {p for t in texts for p in split(t)} - {START}
        return cls([START, *sorted(seen)])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        pieces = split(text)
        unknown = sorted({p for p in pieces if p not in self.index})
        if unknown:
            raise ValueError(f"prompt has tokens outside the model's vocabulary: {', '.join(map(repr, unknown[:8]))}")
        return [self.index[p] for p in pieces]

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)
