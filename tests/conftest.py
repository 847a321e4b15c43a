import atexit
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(__file__)
# Tests import the fixture writers as plain modules; Ray workers need the same path to unpickle test stages.
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# pytest-xdist workers (addopts: -n 2) share the cores: one OpenMP pool each of its share, or two pools of 2 threads
# oversubscribe the 2-core CI machine (a waiting OpenMP thread spins)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores() // _WORKERS))
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# content hashes of dataset files are remembered per user: keep the tests' out of ~/.cache
if "BENCH_HASH_CACHE" not in os.environ:
    os.environ["BENCH_HASH_CACHE"] = tempfile.mkdtemp(prefix="bench-hashes-")
    atexit.register(shutil.rmtree, os.environ["BENCH_HASH_CACHE"], True)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: on a busy 2-core machine a second OpenMP/MKL thread only waits (up to 10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
