"""`outbox demo` on a fresh machine: SQLite in a temporary directory and the embedded broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

OUTBOX = str(Path(sys.executable).with_name("outbox"))


def test_demo_delivers_every_committed_event_and_no_rolled_back_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    result = subprocess.run(
        [OUTBOX, "demo", "--events", "300"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert re.search(r"\bOK: lost 0, phantom 0\b", out), out
    # 300 orders, one in ten rolled back.
    assert re.search(r"written \(committed\)\s*│\s*270\s*│", out), out
    assert re.search(r"rolled back\s*│\s*30\s*│", out), out
    assert re.search(r"lost\s*│\s*0\s*│", out), out
