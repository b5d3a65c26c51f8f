"""Typed errors shared by every part of r1v.

Each error names where the bad input came from (a file, a record, a field) so a user can fix it
without reading a traceback.
"""

from __future__ import annotations


class R1VError(Exception):
    """Base class: an error r1v explains in one line."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (a library's multi-line message folded), as the CLI prints it."""
    return " ".join(str(err).split())


class ConfigError(R1VError):
    """A config file or override is invalid (names the file, key and reason)."""


class DataError(R1VError):
    """A data record is invalid (names the file, line/record and field).

    `detail` is the bare reason; `str(err)` is `source, record N, field 'f': detail`.
    """

    def __init__(self, message: str, *, source: str | None = None, record: int | str | None = None,
                 field: str | None = None) -> None:
        super().__init__(_where(source, record, field) + message)
        self.detail, self.source, self.record, self.field = message, source, record, field


class ImageError(R1VError):
    """An image could not be used (missing, corrupt, too large, ...); names the source.

    `record` and `field` say which sample and which of its images, when the caller knows them:
    `record 7, field 'images[0]': /data/fig.png: not a recognised image format`.
    """

    def __init__(self, message: str, *, source: str | None = None, record: int | str | None = None,
                 field: str | None = None) -> None:
        text = f"{source}: {message}" if source else message
        super().__init__(_where(None, record, field) + text)
        self.message, self.detail, self.source, self.record, self.field = message, text, source, record, field


def _where(source: str | None, record: int | str | None, field: str | None) -> str:
    """`source, record N, field 'f': ` for whichever of the three are given ('' when none)."""
    where = []
    if source is not None:
        where.append(str(source))
    if record is not None:
        where.append(f"record {record}")
    if field is not None:
        where.append(f"field {field!r}")
    return ", ".join(where) + ": " if where else ""


class ModelError(R1VError):
    """A model folder, preset or combination of parts is unusable (names the part and reason)."""


class OutputError(R1VError):
    """An output (a report, a run file, a model folder) cannot be written there (names the path)."""


class AssetError(R1VError):
    """A built-in real part is missing; the message says what to install."""
