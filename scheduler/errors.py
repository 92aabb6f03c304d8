"""Exceptions of the ``scheduler`` package.

Tree::

    SchedulerError
    └── InputError        a file a person wrote is wrong: names the file, line and field

``InputError`` is also a :class:`ValueError`, so code that catches bad values keeps working.
"""

from __future__ import annotations

from models.errors import ProblemError

__all__ = ["InputError", "SchedulerError"]


class SchedulerError(Exception):
    """Base of every error raised by :mod:`scheduler`."""


class InputError(SchedulerError, ValueError):
    """Bad input in a file: what is wrong and where.

    Parameters
    ----------
    file : str
        The file as the user named it (``sites/a.toml``).
    row : int or None
        1-based line number as an editor shows it (the CSV header is line 1); ``None`` for TOML
        tables and whole-file problems.
    field : str or None
        Column (CSV) or key path (TOML, ``charge_points[2].phases``; array indices 0-based).
    message : str
        What is wrong, with the offending value.

    ``str()`` gives ``"sessions.csv:14: arrival: not ISO 8601 with a UTC offset: '2024-01-01 10:00'"``
    or ``"sites/a.toml: charge_points[2].phases: must be 1 or 3, got 2"``.
    """

    def __init__(self, file: str, row: int | None, field: str | None, message: str) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):  # picklable (Dask workers send errors back)
        return (type(self), (self.file, self.row, self.field, self.message))

    @classmethod
    def from_problem(
        cls, file: str, err: ProblemError, *, row: int | None = None, field: str | None = None
    ) -> InputError:
        """Wrap a :class:`~models.errors.ProblemError` with the file (and line) it came from."""
        return cls(file, row, field or err.field, err.message)
