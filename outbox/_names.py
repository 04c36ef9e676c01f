"""Validation of SQL identifiers given by users (table and schema names)."""

from __future__ import annotations

import re

from outbox.errors import ConfigurationError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(value: str, what: str) -> str:
    """Return `value` if it is a plain SQL identifier, else raise `ConfigurationError`.

    Names are also quoted by SQLAlchemy wherever they are used; refusing anything but plain
    identifiers keeps them portable across PostgreSQL, MariaDB and SQLite and shuts out injection.
    """
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigurationError(
            f"invalid {what} {value!r}: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return value
