"""The Alembic integration point named in the docs: `include_object_for`, `upgrade`, `run_env`.

The implementation lives in `outbox.schema.migrate`; this module keeps the documented import path
(`from outbox.migrate import include_object_for`) stable for users' own `env.py`.
"""

from outbox.schema.alembic_config import AlembicConfigWarning
from outbox.schema.migrate import (
    BRANCH,
    VERSION_LOCATION,
    Target,
    build_metadata,
    current_target,
    downgrade,
    include_object_for,
    run_env,
    target,
    upgrade,
)

__all__ = [
    "BRANCH",
    "VERSION_LOCATION",
    "AlembicConfigWarning",
    "Target",
    "build_metadata",
    "current_target",
    "downgrade",
    "include_object_for",
    "run_env",
    "target",
    "upgrade",
]
