"""docs/MIGRATIONS.md's env.py recipe in an application's own Alembic project, as written.

`alembic init`, the recipe copied from the doc, the application's own labelled branch beside the
outbox branch: autogenerate leaves the outbox tables alone, `upgrade heads` creates everything,
`--head app@head` keeps working, offline mode prints both, and the `path_separator = os` trap
is reported instead of silently hiding the outbox revisions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "MIGRATIONS.md"
MODELS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[str] = mapped_column(sa.String(20))
"""


def recipe() -> str:
    text = DOC.read_text()
    block = re.search(
        r"<!-- env.py recipe: start -->\s*```python\n(.*?)```\s*<!-- env.py recipe: end -->",
        text,
        re.DOTALL,
    )
    assert block is not None, "the env.py recipe markers are missing from docs/MIGRATIONS.md"
    return textwrap.dedent(block.group(1))


class Project:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")} | {
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
        }
        self.alembic("init", "alembic")
        (root / "myapp").mkdir()
        (root / "myapp" / "__init__.py").write_text("")
        (root / "myapp" / "models.py").write_text(MODELS)
        (root / "alembic" / "env.py").write_text(recipe())
        self.ini = root / "alembic.ini"
        text = self.ini.read_text().replace("driver://user:pass@localhost/dbname", url)
        text = text.replace(
            "# version_locations = %(here)s/bar:%(here)s/bat:%(here)s/alembic/versions",
            "version_locations = %(here)s/alembic/versions outbox:migrations/versions",
        )
        self.ini.write_text(text)

    def separator(self, value: str) -> None:
        text = re.sub(
            r"(?m)^path_separator = .*$", f"path_separator = {value}", self.ini.read_text()
        )
        self.ini.write_text(text)

    def alembic(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "alembic", *args], cwd=self.root, env=self.env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def revisions(self) -> list[str]:
        return [p.read_text() for p in sorted((self.root / "alembic" / "versions").glob("*.py"))]


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_env_py_recipe_with_the_applications_own_branch(pg_url: str, tmp_path: Path) -> None:
    project = Project(tmp_path, pg_url)

    # alembic init's `path_separator = os` would hide the outbox revisions: said, not silent.
    hidden = project.alembic("upgrade", "heads", ok=False)
    assert "AlembicConfigWarning" in hidden.stderr and "path_separator" in hidden.stderr
    assert "outbox" not in tables(pg_url)

    project.separator("space")
    project.alembic("upgrade", "heads")  # the outbox branch: autogenerate needs an up-to-date db
    assert {"outbox", "outbox_lease"} <= tables(pg_url)
    first = project.alembic(
        "revision", "--autogenerate", "--head", "base", "--branch-label", "app",
        "--version-path", "alembic/versions", "-m", "initial",
    )  # fmt: skip
    assert "AlembicConfigWarning" not in first.stderr
    [initial] = project.revisions()
    assert "create_table('orders'" in initial
    assert "outbox" not in initial  # the filter: the outbox tables are the package's

    project.alembic("upgrade", "heads")
    assert {"orders", "outbox", "outbox_lease", "alembic_version"} <= tables(pg_url)
    heads = project.alembic("heads").stdout
    assert "(app)" in heads and "(outbox)" in heads, heads

    # The next revision goes on the application's own branch, into its own folder.
    models = tmp_path / "myapp" / "models.py"
    models.write_text(
        models.read_text() + "    note: Mapped[str | None] = mapped_column(sa.Text())\n"
    )
    project.alembic("revision", "--autogenerate", "--head", "app@head", "-m", "note")
    second = next(r for r in project.revisions() if "note" in r and "add_column" in r)
    assert "outbox" not in second
    project.alembic("upgrade", "heads")
    project.alembic("check")  # nothing left for autogenerate, outbox tables included

    # Offline: the same recipe prints both branches' SQL without a connection.
    offline = project.alembic("upgrade", "heads", "--sql").stdout
    assert "CREATE TABLE orders" in offline and "CREATE TABLE outbox " in offline
    assert "CREATE TABLE outbox_lease" in offline


def test_path_separator_check() -> None:
    from alembic.config import Config

    from outbox.schema.alembic_config import path_separator_problem

    def config(**options: str) -> Config:
        made = Config()
        for name, value in options.items():
            made.set_main_option(name, value)
        return made

    locations = "app/versions outbox:migrations/versions"
    for separator in ("os", ":"):
        problem = path_separator_problem(
            config(version_locations=locations, path_separator=separator), pathsep=":"
        )
        assert problem is not None and "path_separator = space" in problem
    assert (
        path_separator_problem(config(version_locations=locations, path_separator="os"), ";")
        is None
    )
    for fine in ("space", "newline"):
        assert (
            path_separator_problem(config(version_locations=locations, path_separator=fine)) is None
        )
    assert path_separator_problem(config(version_locations="a:b", path_separator="os")) is None
    legacy = config(version_locations=locations, version_path_separator="os")
    assert path_separator_problem(legacy, pathsep=":") is not None
