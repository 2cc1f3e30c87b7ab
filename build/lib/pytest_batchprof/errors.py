"""How the plugin turns an exception into the one-line reason a user sees."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """``TypeName: first line of the message`` (the name alone for an empty message)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
