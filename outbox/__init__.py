"""sqlalchemy-outbox."""
