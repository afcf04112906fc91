"""The seam's shared pieces: metrics and configuration resolution."""

import dataclasses

import pytest
import torch

from zsl.errors import UserError
from zsl.metrics import harmonic_mean, per_class_accuracy
from zsl.models import base_dataset_name, validate_config


def test_per_class_accuracy_averages_classes_not_samples():
    # class 0: 3 of 4 right; class 1: 0 of 1 right -> mean 0.375 (sample accuracy would be 0.6)
    target = torch.tensor([0, 0, 0, 0, 1])
    pred = torch.tensor([0, 0, 0, 1, 0])
    acc = per_class_accuracy(pred, target, torch.tensor([0, 1]))
    assert acc.item() == pytest.approx(0.375)


def test_per_class_accuracy_skips_absent_classes():
    target = torch.tensor([2, 2])
    pred = torch.tensor([2, 1])
    assert per_class_accuracy(pred, target, torch.tensor([1, 2])).item() == pytest.approx(0.5)


def test_harmonic_mean_hand_values():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


@dataclasses.dataclass
class _Cfg:
    lr: float = 1e-3
    critic_iter: int = 5
    norm: bool = True
    view: str = "V"


def test_validate_config_coerces_and_rejects():
    out = validate_config(_Cfg, {"lr": 1, "critic_iter": 3.0, "norm": "false"}, where="model 'x'")
    assert out == {"lr": 1.0, "critic_iter": 3, "norm": False, "view": "V"}
    with pytest.raises(UserError, match="unknown hyperparameter 'lrr'"):
        validate_config(_Cfg, {"lrr": 1}, where="model 'x'")
    with pytest.raises(UserError, match="'critic_iter'.*int"):
        validate_config(_Cfg, {"critic_iter": 2.5}, where="model 'x'")
    with pytest.raises(UserError, match="'view'"):
        validate_config(_Cfg, {"view": 3}, where="model 'x'")


def test_base_dataset_name():
    assert base_dataset_name("sim-CUB") == "CUB"
    assert base_dataset_name("SUN") == "SUN"
