import sys
from pathlib import Path

# (run from a checkout without `pip install -e examples/sim_npu` too)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
