"""Exceptions of the ``models`` package.

Tree::

    ModelError
    ├── ProblemError      a problem that makes no sense (negative limit, NaN, unknown id, ...)
    └── SolverError       the solver could not be run at all (not: "no solution", see SolveStatus)
"""

from __future__ import annotations

__all__ = ["ModelError", "ProblemError", "SolverError"]


class ModelError(Exception):
    """Base of every error raised by :mod:`models`."""


class ProblemError(ModelError, ValueError):
    """Invalid problem data; ``field`` names the offending field (``sessions[3].departure``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SolverError(ModelError, RuntimeError):
    """The solver library failed in a way that is not a solve outcome (bad model hand-off, ...)."""
