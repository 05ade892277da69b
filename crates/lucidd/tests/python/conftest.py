"""Starts a real `lucidd --worker echo` on 127.0.0.1:0 for the client tests.

The binary comes from LUCIDD_BIN (scripts/test sets it after building).
"""

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lucidd_url():
    binary = os.environ.get("LUCIDD_BIN")
    if not binary or not Path(binary).is_file():
        pytest.fail("LUCIDD_BIN must point at a built lucidd binary (scripts/test sets it)")
    with tempfile.TemporaryDirectory() as data:
        addr_file = Path(data) / "addr"
        log = open(Path(data) / "lucidd.log", "w")
        proc = subprocess.Popen(
            [binary, "--worker", "echo", "--no-p2p", "--listen", "127.0.0.1:0", "--data-dir", data, "--addr-file", str(addr_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not addr_file.exists():
                if proc.poll() is not None:
                    pytest.fail(f"lucidd exited with {proc.returncode}: {(Path(data) / 'lucidd.log').read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail("lucidd did not start within 30 s")
                time.sleep(0.02)
            yield f"http://{addr_file.read_text().strip()}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
