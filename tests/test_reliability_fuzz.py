"""Bounded fuzzing of the Python readers of untrusted bytes (tests/fuzz_readers.py): coverage-
guided with atheris where the `test` extra installed it, else seeded random mutations. Each run
is a fixed number of inputs with a fixed seed (and a time cap), so CI spends seconds and a
failure reproduces; the crashes found so far are regression cases in
tests/test_reliability_files.py."""
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_readers.py")
RUNS = {"safetensors": 20000, "json": 20000, "manifest": 20000}


def has_atheris() -> bool:
    """What the harness will find (it falls back when the import fails)."""
    import importlib
    try:
        importlib.import_module("atheris")
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("target", sorted(RUNS))
def test_reader_survives_fuzzing(target, tmp_path):
    runs = RUNS[target] if has_atheris() else RUNS[target] // 10  # the fallback is slower
    # libFuzzer's RSS limit reads ru_maxrss, which Linux carries across exec: the child would
    # start with pytest's own peak (over 2 GB after the decoding tests) and report an OOM on
    # its first input. So the RSS check is off, and single allocations over 2 GB still fail.
    command = [sys.executable, str(HARNESS), target, f"-runs={runs}", "-seed=1",
               "-max_total_time=20", "-max_len=4096", "-rss_limit_mb=0",
               "-malloc_limit_mb=2048", f"-artifact_prefix={tmp_path}/crash-",
               str(tmp_path / "corpus")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, (crashes, done.stderr[-3000:])
