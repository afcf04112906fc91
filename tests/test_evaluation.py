"""zsl.evaluation: the softmax classifier and GZSL/ZSL scores, on hand-computable toy data (CPU)."""

import pytest
import torch

from zsl.errors import UserError
from zsl.evaluation import Adam, ClassifierConfig, gzsl_evaluate, softmax_nll_grad, zsl_evaluate
from zsl.metrics import harmonic_mean

DIM = 16
pytestmark = pytest.mark.usefixtures("one_thread")


def _points(centres: torch.Tensor, labels: list[int], n: int, noise: float, seed: int):
    """n rows per label around centres[label] (+ Gaussian noise): (x [len(labels)*n, DIM], y)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels).repeat_interleave(n)
    return centres[y] + noise * torch.randn(len(y), DIM, generator=g), y


def _separable(n_classes: int = 6, seen=(0, 1, 2, 3), noise: float = 0.05):
    """Classes at orthogonal corners 3·e_k (linearly separable); seen / unseen split of their ids."""
    centres = 3.0 * torch.eye(n_classes, DIM)
    seen = list(seen)
    unseen = [k for k in range(n_classes) if k not in seen]
    tx, ty = _points(centres, seen, 30, noise, 1)
    sx, sy = _points(centres, unseen, 30, noise, 2)
    esx, esy = _points(centres, seen, 10, noise, 3)
    eux, euy = _points(centres, unseen, 10, noise, 4)
    return dict(train_x=tx, train_y=ty, syn_x=sx, syn_y=sy, eval_seen_x=esx, eval_seen_y=esy,
                eval_unseen_x=eux, eval_unseen_y=euy, seen_classes=torch.tensor(seen),
                unseen_classes=torch.tensor(unseen), n_classes=n_classes)


def _zsl_args(problem: dict) -> dict:
    keys = ("syn_x", "syn_y", "eval_unseen_x", "eval_unseen_y", "unseen_classes")
    return {k: problem[k] for k in keys}


CFG = ClassifierConfig(lr=0.05, epochs=15, batch_size=32)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_softmax_nll_grad_matches_autograd():
    g = _gen(3)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    torch.nn.functional.nll_loss(torch.log_softmax(logits, 1), target).backward()
    assert torch.allclose(softmax_nll_grad(logits.detach(), target), logits.grad)


def test_adam_matches_torch_optim_adam():
    g = _gen(5)
    ours = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    init = [p.clone() for p in ours]
    opt, torch_opt = Adam(ours, lr=0.01, beta1=0.5), torch.optim.Adam(theirs, lr=0.01, betas=(0.5, 0.999))
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ours]
        opt.step(grads)
        for p, grad in zip(theirs, grads):
            p.grad = grad.clone()
        torch_opt.step()
    for p, q, p0 in zip(ours, theirs, init):
        assert (p - p0).abs().min() > 1e-3  # every entry moved ...
        assert torch.allclose(p, q.detach(), rtol=0, atol=1e-12)  # ... exactly as torch's Adam moved it


def test_separable_data_scores_100_percent():
    problem = _separable()
    out = gzsl_evaluate(**problem, cfg=CFG, generator=_gen())
    assert out == {"S": 100.0, "U": 100.0, "H": 100.0}
    assert zsl_evaluate(**_zsl_args(problem), cfg=CFG, generator=_gen()) == {"ZSL": 100.0}


def test_zsl_maps_unsorted_noncontiguous_unseen_ids_back():
    # unseen ids 5, 1, 3 (unsorted, with gaps): a wrong local<->global mapping would score ~0
    problem = _separable(n_classes=6, seen=(0, 2, 4))
    problem["unseen_classes"] = torch.tensor([5, 1, 3])
    assert zsl_evaluate(**_zsl_args(problem), cfg=CFG, generator=_gen())["ZSL"] == 100.0


def test_scores_are_per_class_means_not_sample_means():
    # eval_seen: 18 rows of class 0 (predicted 0) and 2 rows labelled 1 placed on class 0's corner
    # (predicted 0): per-class mean S = (18/18 + 0/2) / 2 = 50 %, the sample mean would be 90 %.
    problem = _separable(n_classes=4, seen=(0, 1))
    centres = 3.0 * torch.eye(4, DIM)
    problem["eval_seen_x"] = _points(centres, [0], 20, 0.05, 9)[0]
    problem["eval_seen_y"] = torch.tensor([0] * 18 + [1] * 2)
    out = gzsl_evaluate(**problem, cfg=CFG, generator=_gen())
    assert out["S"] == pytest.approx(50.0)
    assert out["U"] == pytest.approx(100.0)
    assert out["H"] == pytest.approx(harmonic_mean(50.0, 100.0))


def test_gzsl_argmax_runs_over_all_classes():
    # an unseen eval row sitting on a seen class's corner is predicted as that seen class: U drops
    problem = _separable(n_classes=4, seen=(0, 1))
    centres = 3.0 * torch.eye(4, DIM)
    problem["eval_unseen_x"] = torch.cat([_points(centres, [2], 4, 0.05, 9)[0], _points(centres, [0], 4, 0.05, 9)[0]])
    problem["eval_unseen_y"] = torch.tensor([2] * 4 + [3] * 4)  # class 3's rows look like class 0
    out = gzsl_evaluate(**problem, cfg=CFG, generator=_gen())
    assert out["U"] == pytest.approx(50.0)
    zsl = zsl_evaluate(**_zsl_args(problem), cfg=CFG, generator=_gen())["ZSL"]
    assert zsl <= 100.0  # over unseen only, class 3's rows must go to class 2 or 3; not forced to 0


def _hard_problem():
    """Overlapping classes (noise comparable to the class distance): accuracies vary by epoch."""
    problem = _separable(n_classes=6, noise=1.5)
    return problem


def test_best_selection_is_at_least_last():
    problem = _hard_problem()
    cfg_last = ClassifierConfig(lr=0.01, epochs=12, batch_size=16, selection="last")
    cfg_best = ClassifierConfig(lr=0.01, epochs=12, batch_size=16, selection="best")
    last = gzsl_evaluate(**problem, cfg=cfg_last, generator=_gen(5))
    best = gzsl_evaluate(**problem, cfg=cfg_best, generator=_gen(5))
    assert best["H"] >= last["H"]
    assert best["H"] == pytest.approx(harmonic_mean(best["S"], best["U"]))
    z_last = zsl_evaluate(**_zsl_args(problem), cfg=cfg_last, generator=_gen(5))["ZSL"]
    z_best = zsl_evaluate(**_zsl_args(problem), cfg=cfg_best, generator=_gen(5))["ZSL"]
    assert z_best >= z_last


def test_deterministic_given_generator_seed():
    problem = _hard_problem()
    cfg = ClassifierConfig(lr=0.01, epochs=4, batch_size=16)
    runs = [gzsl_evaluate(**problem, cfg=cfg, generator=_gen(seed)) for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_one_batch_per_epoch_when_batch_exceeds_rows():
    # the reference's batch = syn_num regime: a batch larger than the data is one full-batch step
    problem = _separable()
    cfg = ClassifierConfig(lr=0.1, epochs=30, batch_size=10_000)
    assert gzsl_evaluate(**problem, cfg=cfg, generator=_gen())["H"] == 100.0


def test_bad_config_and_labels_are_rejected():
    with pytest.raises(UserError, match="selection"):
        ClassifierConfig(selection="max")
    with pytest.raises(UserError, match="epochs"):
        ClassifierConfig(epochs=0)
    problem = _separable()
    problem["syn_y"] = problem["syn_y"].clone()
    problem["syn_y"][0] = 0  # a seen id among the synthetic unseen labels
    with pytest.raises(ValueError, match="syn_y"):
        gzsl_evaluate(**problem, cfg=CFG, generator=_gen())
