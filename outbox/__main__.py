"""`python -m outbox`: the `outbox` command (what `--workers` starts its members with)."""

from outbox.cli import main

if __name__ == "__main__":
    main()
