"""What this process is doing now, in a few words (the CLI's progress bar shows it)."""

from __future__ import annotations

__all__ = ["activity", "set_activity"]

_ACTIVITY = {"text": ""}


def set_activity(text: str) -> None:
    """Say what this process is doing now."""
    _ACTIVITY["text"] = text


def activity() -> str:
    """What this process is doing now."""
    return _ACTIVITY["text"]
