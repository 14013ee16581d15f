"""Issue 8, soak: the CI version of ``bench/soak`` (2 minutes, 300 requests/s).

The 60-minute run at 1,000 requests/s is in the README; here the same script
runs for 120 s at a lower rate (the CI machine shares its two cores with the
rest of the suite), with a rotation every ~30 s so that several rotations
happen, and must report zero loss and flat RSS and descriptors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "bench" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_minute_soak_has_no_loss_and_flat_memory_and_fds(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--duration=120",
            "--rate=300",
            "--interval=10",
            "--rotate-every=30",
            "--warmup=30",
            f"--folder={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert re.search(r"^requests: 36000 scheduled, 36000 ok, 0 errors, 0 non-2xx", out, re.M), out
    assert re.search(r"^RSS master\+workers: .*: flat ", out, re.M), out
    assert re.search(r"^fds master\+workers: .*: flat ", out, re.M), out
    assert re.search(
        r"^loss check OK: 36000 acknowledged, .* 0 missing, 0 duplicated, 0 lines", out, re.M
    ), out
    rotations = int(re.search(r"^rotations: (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert rotations >= 2, out
    # One progress line per interval, each with the master and every worker.
    progress = [line for line in out.splitlines() if line.startswith("t=")]
    assert len(progress) >= 10, out
    assert all("master:" in line and "worker " in line for line in progress), out
    assert not list(tmp_path.iterdir()), "the soak left its folder behind"
