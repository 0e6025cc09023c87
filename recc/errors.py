"""Errors a user can cause, each with a position and a message meant for them.

A `SpecError` prints as::

    specs/bad.rec:7:9: shapes [K] and [V] do not match for '+'
          S = k + v
                ^

The command line prints it and exits with status 1; no traceback.
"""
from __future__ import annotations


class ReccError(Exception):
    """Base of errors caused by the user (a spec, an argument, a file)."""


class SpecError(ReccError):
    """An error in a spec, at a position in its text."""

    def __init__(self, message: str, line: int, col: int, file: str = "<spec>", source: str = ""):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col
        self.file = file
        self.source = source

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def __str__(self) -> str:
        head = f"{self.location}: {self.message}"
        lines = self.source.split("\n")  # as the parser counts lines (splitlines would also split at \f, \x1c, ...)
        if 1 <= self.line <= len(lines) and lines[self.line - 1].strip():
            text = lines[self.line - 1].rstrip()
            col = min(max(self.col, 1), len(text) + 1)
            # keep tabs so the caret lines up under the right character
            pad = "".join(c if c == "\t" else " " for c in text[: col - 1])
            return f"{head}\n    {text}\n    {pad}^"
        return head


class ArgumentError(ReccError, ValueError):
    """A wrong argument at call time (shape, dtype, device); names the argument."""
