"""Errors a user can act on.

Every error that reaches the CLI or the HTTP edge is one of these, so the edge
can print a one-line message (naming the file and field where there is one)
instead of a stack trace.
"""

from __future__ import annotations


class SkillMoEError(Exception):
    """Base class for errors whose message is meant for the user."""


class ConfigError(SkillMoEError):
    """A configuration or data file is missing, unreadable or has a wrong field."""


class DataError(SkillMoEError):
    """A data set or recorded-output file is malformed."""


class EngineError(SkillMoEError):
    """An engine could not load a model or answer a request."""
