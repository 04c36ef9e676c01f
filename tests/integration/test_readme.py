"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_examples_run_in_order(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2
    for number, block in enumerate(blocks):
        script = tmp_path / f"example_{number}.py"
        script.write_text(block)
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"README example {number} failed:\n{result.stderr}"
    assert (tmp_path / "shop.db").exists()


def test_in_memory_publisher_snippet_runs_twice_in_a_row(tmp_path: Path) -> None:
    """The snippet closes its relay: the next run (the next test) gets the lease at once."""
    blocks = python_blocks()
    quickstart = blocks[0]
    snippet = next(b for b in blocks if "InMemoryPublisher()" in b)
    for round_ in range(2):
        for name, block in (("quickstart", quickstart), ("relay", snippet)):
            script = tmp_path / f"{name}.py"
            script.write_text(
                block + "\nprint('published', len(publisher.messages))\n" * (name == "relay")
            )
            result = subprocess.run(
                [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert result.returncode == 0, f"round {round_}, {name}:\n{result.stderr}"
            if name == "relay":
                # The quickstart's two events, each round: none held back by a stale lease.
                assert result.stdout.split() == ["published", "2"], result.stdout
