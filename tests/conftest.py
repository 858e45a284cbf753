import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tiny_models and other test helpers

import torch

# One thread per test process: `make test` runs two pytest-xdist workers on the two cores,
# and tiny models are far slower with several threads on a busy machine.
torch.set_num_threads(1)
