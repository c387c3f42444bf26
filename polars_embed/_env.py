"""On/off switches, from the environment or an option's string, so that every switch reads alike."""

from __future__ import annotations

import os

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def switch_value(text: str) -> bool | None:
    """True for 1, true, yes or on, False for 0, false, no or off (any case), else None."""
    word = text.strip().lower()
    return True if word in _ON else False if word in _OFF else None


def env_flag(name: str) -> bool | None:
    """The switch ``name`` in the environment: False for 0, false, no or off (any case),
    True for any other value, and None where it is unset or empty, so the caller's default holds."""
    text = os.environ.get(name, "")
    if not text.strip():
        return None
    return switch_value(text) is not False
