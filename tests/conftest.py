import os
import sys

HERE = os.path.dirname(__file__)
# Tests import the fixture writers as plain modules; Ray workers need the same path to unpickle test stages.
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
