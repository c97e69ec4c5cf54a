import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # tools/ holds scripts, not a package

# Small networks run fastest on one thread, and a second thread collapses when the machine is busy
# (an attention training test took 1 s alone and 73 s beside two training runs with 2 threads).
torch.set_num_threads(1)
