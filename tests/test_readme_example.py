"""The README's example of the engine package runs as written (gevent-patched, as it says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout: the engine package", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_streams_the_answer() -> None:
    program = "from gevent import monkey\nmonkey.patch_all()\n" + readme_example()
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("id: 0\nevent: start\ndata: {")
    assert 'event: token\ndata: {"content": "Hi "}\n\n' in out
    assert ('\nevent: done\ndata: {"finish_reason": "stop", "provider_finish_reason": "stop", '
            '"model": "demo/echo"') in out
    assert out.endswith("\n\n")
