"""Checks of an application's Alembic configuration that Alembic itself does not make.

With ``path_separator = os`` (what ``alembic init`` writes) Alembic splits ``version_locations``
on ``:`` on Linux and macOS, so ``outbox:migrations/versions`` becomes two meaningless paths and
Alembic finds no outbox revision, silently: ``alembic heads`` prints nothing of ours and
``upgrade heads`` creates no table. `target()` (called by the recommended env.py) warns.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

#: The resource prefix of the package's revisions in `version_locations`.
_RESOURCE = "outbox:"


class AlembicConfigWarning(UserWarning):
    """The application's Alembic configuration would hide the outbox revisions."""


def path_separator_problem(config: Any, pathsep: str = os.pathsep) -> str | None:
    """Why `config` (an `alembic.config.Config`) hides ``outbox:migrations/versions``, or None."""
    try:
        locations = config.get_main_option("version_locations")
        separator = config.get_main_option("path_separator") or config.get_main_option(
            "version_path_separator"
        )
    except Exception:  # a config without a main section: nothing to check
        return None
    if not isinstance(locations, str) or _RESOURCE not in locations:
        return None
    splits_on = {"os": pathsep, ":": ":"}.get((separator or "").strip())
    if splits_on != ":":
        return None
    where = getattr(config, "config_file_name", None) or "the Alembic config"
    return (
        f"{where}: path_separator = {separator} splits version_locations on ':', which cuts "
        "'outbox:migrations/versions' in two, so Alembic finds no outbox revision; "
        "set path_separator = space (or newline) and separate the locations accordingly"
    )


def warn_about(config: Any) -> None:
    """Warn (`AlembicConfigWarning`) when `config` hides the outbox revisions."""
    problem = path_separator_problem(config)
    if problem is not None:
        warnings.warn(problem, AlembicConfigWarning, stacklevel=3)


__all__ = ["AlembicConfigWarning", "path_separator_problem", "warn_about"]
