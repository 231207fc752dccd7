"""Without the dataset fixtures, a run ends with one line that says so (tests/conftest.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tests_skipped_for_want_of_the_fixtures_are_counted_in_one_line(tmp_path):
    missing = tmp_path / "no-fixtures"
    env = {**os.environ, "SPA_FIXTURES": str(missing), "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_sources.py", "tests/test_ratio.py"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    # pytest's own report (-rs) groups the skips by reason: "SKIPPED [7] tests/conftest.py:23: <reason>"
    reason = f"dataset fixtures not found at {missing}"
    skipped = sum(int(n) for n, text in re.findall(r"^SKIPPED \[(\d+)\] (.*)$", run.stdout, re.M) if reason in text)
    summary = [line for line in run.stdout.splitlines() if line.endswith("(put the shared fixtures there, or set "
                                                                          "SPA_FIXTURES)")]
    assert skipped > 0 and summary == [f"{skipped} tests skipped: {reason} (put the shared fixtures there, or set "
                                       f"SPA_FIXTURES)"]
