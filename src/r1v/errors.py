"""Typed errors shared by every part of r1v.

Each error names where the bad input came from (a file, a record, a field) so a user can fix it
without reading a traceback.
"""

from __future__ import annotations


class R1VError(Exception):
    """Base class: an error r1v explains in one line."""


class ConfigError(R1VError):
    """A config file or override is invalid (names the file, key and reason)."""


class DataError(R1VError):
    """A data record is invalid (names the file, line/record and field)."""

    def __init__(self, message: str, *, source: str | None = None, record: int | str | None = None,
                 field: str | None = None) -> None:
        where = []
        if source is not None:
            where.append(str(source))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(prefix + message)
        self.source, self.record, self.field = source, record, field


class ImageError(R1VError):
    """An image could not be used (missing, corrupt, too large, ...); names the source."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source


class ModelError(R1VError):
    """A model folder, preset or combination of parts is unusable (names the part and reason)."""


class AssetError(R1VError):
    """A built-in real part is missing; the message says what to install."""
