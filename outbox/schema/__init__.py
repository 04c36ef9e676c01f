"""The tables' single source of truth (`tables`) and the Alembic runner (`migrate`)."""
