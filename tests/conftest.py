import os
import sys

# Tests import the fixture writers as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "2")
