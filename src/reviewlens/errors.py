"""Errors meant for people: each names the file, row and field, and how to fix it."""

from __future__ import annotations


class ReviewlensError(Exception):
    """Base class of every error reviewlens raises on purpose."""


class LabelError(ReviewlensError):
    """A completion string that the label schema cannot read."""

    def __init__(self, message: str, *, text: str | None = None, row: int | str | None = None,
                 source: str | None = None) -> None:
        self.text, self.row, self.source = text, row, source
        where = ", ".join(p for p in (
            f"file {source}" if source else "",
            f"row {row}" if row is not None else "",
        ) if p)
        shown = f" in {text!r}" if text is not None else ""
        super().__init__(f"{where + ': ' if where else ''}{message}{shown}")


class DataError(ReviewlensError):
    """One or more bad rows in an input file; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list["RowProblem"]) -> None:
        self.source, self.problems = source, problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{source}: {len(problems)} bad row(s); nothing was loaded "
            f"(fix them, or pass --skip-bad-rows to load the good rows and write the rejects aside):\n{shown}{more}"
        )


class RowProblem:
    """What is wrong with one field of one row."""

    __slots__ = ("source", "row", "field", "reason")

    def __init__(self, source: str, row: int | str, field: str, reason: str) -> None:
        self.source, self.row, self.field, self.reason = source, row, field, reason

    def __str__(self) -> str:
        return f"{self.source} row {self.row}, field '{self.field}': {self.reason}"

    def to_dict(self) -> dict:
        return {"source": self.source, "row": self.row, "field": self.field, "reason": self.reason}


class ModelError(ReviewlensError):
    """A model directory or bundle that cannot be used."""


class MissingExtraError(ReviewlensError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'reviewlens[{extra}]'")


def require(module: str, extra: str):
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module, extra) from exc


class UnreadableFileError(DataError):
    """A whole file that cannot be read (missing, empty, undecodable, no text column); skipping rows cannot help."""

    def __init__(self, source: str, reason: str, *, field: str = "file", row: int | str = "-") -> None:
        super().__init__(source, [RowProblem(source, row, field, reason)])
        self.reason = reason
        self.args = (f"{source}: {reason}",)

    def __str__(self) -> str:
        return self.args[0]
