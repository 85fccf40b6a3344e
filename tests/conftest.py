"""Shared test set-up: the unit tests run tiny tensors, for which one thread is fastest."""

import torch

torch.set_num_threads(1)
