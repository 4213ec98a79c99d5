"""The error every layer raises for input it cannot use, below all of them (spaces, objectives, data
and the search import it; it imports nothing of vitshrink)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration or recipe that cannot be used; the message says what and how to fix it."""


__all__ = ["ConfigError"]
