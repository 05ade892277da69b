"""Starts real lucidd daemons on 127.0.0.1:0 for the client tests: one with the echo worker, and
one serving the real Gemma 3 270M through llama-server with the test chat templates that let it
call tools (`agent`) and reason (`thinker`).

The binary comes from LUCIDD_BIN (scripts/test sets it after building); the model and
llama-server from PHASE_TEST_MODEL and LLAMA_SERVER_BINARY (set by scripts/setup's helpers).
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


TEMPLATES = Path(__file__).resolve().parent.parent / "real_model" / "templates"


@pytest.fixture(scope="session")
def lucidd_url():
    yield from run_lucidd(["--worker", "echo"])


@pytest.fixture(scope="session")
def real_model_url():
    model = os.environ.get("PHASE_TEST_MODEL")
    server = os.environ.get("LLAMA_SERVER_BINARY")
    if not model or not Path(model).is_file() or not server:
        pytest.fail("PHASE_TEST_MODEL and LLAMA_SERVER_BINARY must be set: run scripts/test")
    with tempfile.TemporaryDirectory() as models:
        for name, template in [("agent", "tools.jinja"), ("thinker", "think.jinja")]:
            os.symlink(model, Path(models) / f"{name}.gguf")
            shutil.copy(TEMPLATES / template, Path(models) / f"{name}.jinja")
        yield from run_lucidd(["--worker", "llama-cpp", "--model-dir", models, "--llama-server-binary", server])


def run_lucidd(worker_args):
    binary = os.environ.get("LUCIDD_BIN")
    if not binary or not Path(binary).is_file():
        pytest.fail("LUCIDD_BIN must point at a built lucidd binary (scripts/test sets it)")
    with tempfile.TemporaryDirectory() as data:
        addr_file = Path(data) / "addr"
        log = open(Path(data) / "lucidd.log", "w")
        proc = subprocess.Popen(
            [binary, *worker_args, "--no-p2p", "--listen", "127.0.0.1:0", "--data-dir", data, "--addr-file", str(addr_file)],
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
