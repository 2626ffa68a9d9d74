"""In-memory datasets: every rank loads the same tensors and trains on its own shard."""

from ddtrain.data.datasets import Splits, load_splits

__all__ = ["Splits", "load_splits"]
