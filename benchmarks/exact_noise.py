"""B_simple known exactly: softmax regression (model=mlp model.hidden_sizes=[]) on the synthetic teacher-student data.

For a linear model with logits z = W x + b and cross-entropy, one example's gradient is (p - e_y) x^T
for W and p - e_y for b, so every example's gradient is known in closed form at given weights. Over
the training set (the distribution minibatches are drawn from) that gives G, the mean gradient, and
tr(Sigma) = mean |g_i|^2 - |G|^2 exactly: B_simple = tr(Sigma) / |G|^2 with no sampling noise. This
checks the estimator the probe uses (per-rank against all-reduced gradient norms) on a known answer.

    python benchmarks/exact_noise.py <checkpoint.pt> [dataset overrides...]
"""

from __future__ import annotations

import sys

import torch


def exact_b_simple(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    """|G|^2, tr(Sigma) and B_simple of mean cross-entropy at (weight, bias) over the examples (x, y)."""
    x, weight, bias = x.double().flatten(1), weight.double(), bias.double()
    p = torch.softmax(x @ weight.T + bias, dim=1)
    r = p - torch.nn.functional.one_hot(y, p.shape[1]).double()       # dL/dz per example
    n = x.shape[0]
    g_w, g_b = r.T @ x / n, r.mean(0)                                   # G
    grad_sq = g_w.pow(2).sum().item() + g_b.pow(2).sum().item()
    mean_sq = (r.pow(2).sum(1) * (x.pow(2).sum(1) + 1.0)).mean().item()  # E|g_i|^2 = |r_i|^2 (|x_i|^2 + 1)
    trace = mean_sq - grad_sq
    loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y).item()
    return {"grad_sq": grad_sq, "trace_sigma": trace, "b_simple": trace / grad_sq, "loss": loss}


def at_checkpoint(path, dataset_overrides: list[str]) -> dict:
    """exact_b_simple at a checkpoint's weights over the training split of the configured dataset."""
    from ddtrain.compose import compose
    from ddtrain.data import load_splits

    cfg = compose("train", dataset_overrides)
    data = load_splits(cfg.dataset, torch.device("cpu"))
    model = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return exact_b_simple(model["net.0.weight"], model["net.0.bias"], data.train_x, data.train_y)


if __name__ == "__main__":
    print(at_checkpoint(sys.argv[1], sys.argv[2:]))
