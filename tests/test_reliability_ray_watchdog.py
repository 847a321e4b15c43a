"""A driver killed with SIGKILL leaves no Ray process behind (issue 20: two agents lingered for minutes)."""

import os
import signal
import subprocess
import sys
import time

import psutil

DRIVER = """
import json, sys, psutil
from bench.scheduler import init_ray
init_ray(num_cpus=1)
me = psutil.Process()
print(json.dumps([c.pid for c in me.children(recursive=True)]), flush=True)
import time; time.sleep(600)
"""


def test_killed_driver_takes_its_local_ray_along():
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        import json

        ray_pids = json.loads(driver.stdout.readline())
        procs = [psutil.Process(p) for p in ray_pids if psutil.pid_exists(p)]
        names = " ".join(p.name() for p in procs)
        assert "raylet" in names and "gcs_server" in names, names
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                  for p in procs):
            time.sleep(0.5)
        left = [p.name() for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"still running 20 s after the driver was killed: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()


def test_reap_leaves_a_reused_pid_alone():
    from bench.ray_watchdog import reap

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        created = psutil.Process(sleeper.pid).create_time()
        assert reap([(sleeper.pid, created + 1.0)]) == 0 and sleeper.poll() is None  # not the recorded process
        assert reap([(sleeper.pid, created)]) == 1
        sleeper.wait(timeout=5)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
