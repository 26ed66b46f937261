"""The typed errors rayml raises.

Every error says what was wrong and how to fix it. All of them pickle cleanly (plain ``str`` args), so
they cross Ray worker boundaries intact. The CLI prints a ``RaymlError`` without a stack trace: it is the
user's mistake or the data's, not a bug.
"""

from __future__ import annotations


class RaymlError(Exception):
    """Base of every error rayml raises on purpose."""


class ConfigError(RaymlError):
    """A job or serve config is invalid. ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str] | str, source: str = "config") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(problems, source)

    def __str__(self) -> str:
        head = f"{self.source}: {len(self.problems)} problem(s)"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class DataValidationError(RaymlError):
    """Too many records failed validation, or the data cannot be read at all."""


class ParityError(RaymlError):
    """The exported ONNX model does not reproduce the torch model within tolerance."""


class RegistryError(RaymlError):
    """A registered model is missing, malformed, or fails its checksum."""


class RequestError(RaymlError):
    """A serving request is malformed. ``status`` is the HTTP status to answer with (always 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.message = message
        self.status = status
        super().__init__(message, status)

    def __str__(self) -> str:
        return self.message


def summarize(problems: list[str], limit: int = 5) -> str:
    """The first ``limit`` problems joined by "; ", then how many more there were."""
    shown = "; ".join(problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more problem(s)" if more > 0 else "")
