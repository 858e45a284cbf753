import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tiny_models and other test helpers

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
