"""The worked example of docs/DATA-LIBERATION.md runs as written: the shop's customers end up,
exactly, in a read model in another database."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import clean_env, fresh_database

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "DATA-LIBERATION.md"


def example() -> str:
    [block] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return block


@pytest.mark.parametrize(("shop", "read"), [("postgresql", "mariadb"), ("mariadb", "sqlite")])
def test_the_worked_example_builds_the_read_model(
    shop: str, read: str, kafka: str, tmp_path: Path
) -> None:
    script = tmp_path / "liberate.py"
    script.write_text(example())
    with (
        fresh_database(shop, str(tmp_path)) as shop_url,
        fresh_database(read, str(tmp_path)) as read_url,
    ):
        env = clean_env(
            SHOP_DB=shop_url,
            READ_DB=read_url,
            KAFKA=kafka,
            CUSTOMERS_TABLE=f"customers_{uuid.uuid4().hex[:8]}",
        )
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"snapshot \S+: \d+ rows in \d+ chunks", done.stdout)
    matched = re.search(r"read model matches the shop: (\d+) customers", done.stdout)
    # 2,000 rows, every 40th of the first 1,990 deleted, one newcomer.
    assert matched and int(matched.group(1)) == 2000 - 49 + 1
