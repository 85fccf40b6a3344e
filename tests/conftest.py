"""Shared test set-up: float64 tests use explicit dtypes; keep torch on the machine's 2 cores."""

import torch

torch.set_num_threads(2)
