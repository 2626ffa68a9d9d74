"""Datasets: held in memory by every rank (the built-in sets), or read from disk by DataLoader workers
(dataset=image_folder, your own dataset._target_); load_data returns either behind one interface."""

from ddtrain.data.datasets import Splits, load_splits
from ddtrain.data.feed import load_data

__all__ = ["Splits", "load_data", "load_splits"]
