"""Accuracy metrics of (generalised) zero-shot learning, as pure functions on tensors."""

from __future__ import annotations

import torch


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean over ``classes`` of each class's accuracy, as a fraction in [0, 1] (0-d tensor).

    pred, target: [N] int64 class ids; classes: [M] int64 ids to average over.  Classes with
    no sample in ``target`` are skipped.  Runs on the tensors' device with no host sync.
    """
    classes = classes.to(target.device)
    hit = (pred == target).to(torch.float64)
    onehot = (target.unsqueeze(1) == classes.unsqueeze(0)).to(torch.float64)  # [N, M]
    count = onehot.sum(0)
    correct = (onehot * hit.unsqueeze(1)).sum(0)
    present = count > 0
    acc = correct[present] / count[present]
    return acc.mean() if acc.numel() else torch.zeros((), dtype=torch.float64, device=target.device)


def harmonic_mean(seen: float, unseen: float) -> float:
    """GZSL harmonic mean H = 2SU/(S+U) (0 when both are 0); units as given."""
    total = seen + unseen
    return 0.0 if total <= 0 else 2.0 * seen * unseen / total
