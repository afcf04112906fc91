"""SOVR's maths on tiny tensors, checked against hand computation (spec dkgzsl.md §3.1-§3.2, §5, §10)."""

import math

import numpy as np
import pytest
import torch

from zsl.errors import UserError
from zsl.models.sovr import (SOVR, SOVRConfig, ara_attention, ara_forward, attribute_vectors, balanced_batch,
                             blob_mask, channel_topk, check_sovr_config, class_logits, class_prototypes, count_of,
                             extract, fde_weights, position_attention, topk_mask, train_sovr)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_constants_are_fractions_of_r():
    assert [count_of(f, 196) for f in (80 / 196, 120 / 196, 30 / 196)] == [80, 120, 30]       # the paper's values
    assert [count_of(f, 16) for f in (80 / 196, 120 / 196, 30 / 196)] == [7, 10, 2]
    assert count_of(30 / 196, 49) == 8                                                         # spec §9.3: ≈ 8 at 7 x 7
    assert count_of(1e-6, 16) == 1 and count_of(1.0, 16) == 16


def test_position_attention_by_hand():
    act = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])        # [B=1, C=2, R=2]
    glob = torch.tensor([[2.0, 1.0]])
    queries = torch.tensor([[3.0, 0.0], [0.0, 4.0]])       # rows normalised -> identity
    # M[r=0] = [2, 0], M[r=1] = [0, 1]; softmax over v, mean over r, L2-normalise
    r0 = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    r1 = [1 / (1 + math.e), math.e / (1 + math.e)]
    mean = np.array([(r0[0] + r1[0]) / 2, (r0[1] + r1[1]) / 2])
    expected = mean / np.linalg.norm(mean)
    assert np.allclose(position_attention(act, glob, queries)[0].numpy(), expected, atol=1e-6)


def test_blob_mask_by_hand_uses_8_connectivity_and_min_area():
    a = torch.full((1, 16), 0.01)
    for cell in (0, 1, 7, 10, 12):   # (0,0)-(0,1) a pair; (1,3)-(2,2) diagonal pair; (3,0) alone
        a[0, cell] = 0.3
    a[0, 15] = 0.05                 # exactly the threshold: off (a > threshold)
    keep = blob_mask(a, 4, 0.05, 2)[0]
    assert sorted(np.flatnonzero(keep.numpy()).tolist()) == [0, 1, 7, 10]
    assert not blob_mask(a, 4, 0.05, 3).any()


def test_blob_mask_equals_scipy_label():
    from scipy import ndimage

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(64, 196, generator=gen) * 0.1
    keep = blob_mask(a, 14, 0.05, 30).numpy()
    for b in range(a.shape[0]):
        on = (a[b] > 0.05).numpy().reshape(14, 14)
        lab, _ = ndimage.label(on, structure=np.ones((3, 3)))
        sizes = np.bincount(lab.ravel())
        want = on & (sizes[lab] >= 30)
        assert np.array_equal(keep[b].reshape(14, 14), want)
    assert keep.any() and not keep.all()                   # the sample exercised both outcomes


def test_fde_weights_reference_half_and_hard_zero():
    a = torch.tensor([[0.8, 0.6]])
    keep = torch.tensor([[True, False]])
    assert torch.allclose(fde_weights(a, keep, "sigmoid"), torch.tensor([[1 / (1 + math.exp(-0.8)), 0.5]]))
    assert torch.allclose(fde_weights(a, keep, "hard"), torch.tensor([[1 / (1 + math.exp(-0.8)), 0.0]]))


def test_topk_masks():
    p = torch.tensor([[[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 4.0, 6.0]]])   # [B=1, C=2, R=4]
    assert torch.equal(channel_topk(p, 2), torch.tensor([[[3.0, 0.0, 2.0, 0.0], [0.0, 5.0, 0.0, 6.0]]]))
    assert topk_mask(torch.tensor([1.0, 3.0, 2.0]), 1).tolist() == [False, True, False]


def test_ara_zero_fill_inverts_negative_logits_and_minus_inf_does_not():
    logits = torch.tensor([[[-1.0, -2.0, -3.0, -4.0]]])
    zero = ara_attention(logits, 2, "zero")[0, 0]
    # kept e^-1, e^-2; removed regions get e^0 each: each removed region outweighs the best kept one by e (spec §10)
    total = math.exp(-1) + math.exp(-2) + 2
    assert torch.allclose(zero, torch.tensor([math.exp(-1), math.exp(-2), 1, 1]) / total)
    assert zero[2] / zero[0] == pytest.approx(math.e)
    inf = ara_attention(logits, 2, "-inf")[0, 0]
    assert torch.allclose(inf, torch.tensor([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0, 0]))


def test_ara_forward_by_hand():
    regions = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])      # [B=1, R=2, C=2] -> unit rows [.6, .8], [0, 1]
    v = torch.tensor([[1.0, 0.0]])                          # [A=1, E=2]
    w2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])             # logits = first channel of f: [.6, 0]
    w1 = torch.tensor([[1.0, 1.0], [5.0, 5.0]])             # v W1 = [1, 1]
    h, s = ara_forward(regions, v, w1, w2, k=2)
    alpha = [math.exp(0.6) / (math.exp(0.6) + 1), 1 / (math.exp(0.6) + 1)]
    want_h = [alpha[0] * 0.6, alpha[0] * 0.8 + alpha[1]]
    assert torch.allclose(h[0, 0], torch.tensor(want_h)) and s[0, 0].item() == pytest.approx(sum(want_h), rel=1e-6)


def test_ara_starts_uniform_with_w2_zero():
    regions = torch.randn(2, 5, 3)
    h, _ = ara_forward(regions, torch.randn(4, 6), torch.randn(6, 3), torch.zeros(6, 3), k=2)
    unit_mean = torch.nn.functional.normalize(regions, dim=2).mean(1)
    assert torch.allclose(h, unit_mean[:, None, :].expand(2, 4, 3), atol=1e-6)   # 0-fill ties: all regions


def test_prototypes_threshold_negatives_and_logits():
    phi = class_prototypes(np.array([[3.0, -4.0], [0.0, 2.0]]))
    assert torch.allclose(phi, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert class_logits(torch.tensor([[1.0, 2.0]]), phi).tolist() == [[1.0, 2.0]]


def test_attribute_vectors_fixed_random_or_given():
    a, b = attribute_vectors(7), attribute_vectors(7)
    assert a.shape == (7, 300) and np.array_equal(a, b) and np.allclose(np.linalg.norm(a, axis=1), 1)
    given = np.eye(7, 10) * 3
    assert np.allclose(attribute_vectors(7, given), np.eye(7, 10))
    with pytest.raises(UserError, match="attribute_vectors"):
        attribute_vectors(7, np.ones((6, 300)))


@pytest.mark.parametrize("z, images", [(40, 40), (27, 27), (150, 50), (10, 50), (3, 48)])
def test_balanced_batch_size(z, images):
    rng = np.random.default_rng(0)
    by_class = [np.arange(c * 100, c * 100 + 30) for c in range(z)]
    rows = balanced_batch(rng, by_class, 50)
    assert rows.size == images                                     # min(Z, 50) * max(50 // Z, 1)
    classes = rows // 100
    assert np.unique(classes).size == min(z, 50)
    assert all(np.unique(rows[classes == c]).size == (rows[classes == c]).size for c in np.unique(classes))


def test_config_checks_name_the_hyperparameter():
    with pytest.raises(UserError, match="'sovr_fde'"):
        check_sovr_config(SOVRConfig(fde="trained"), prefix="sovr_")
    with pytest.raises(UserError, match="'ara_topk'"):
        check_sovr_config(SOVRConfig(ara_topk=1.5))


def _toy(n_per=12, classes=4, grid=2, dim=6, seed=0):
    """Tokens [N, 1 + grid², dim] whose class shows in one random region; labels; attributes [K, 3]."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per)
    proto = rng.normal(size=(classes, dim)) * 3
    tokens = rng.normal(size=(labels.size, 1 + grid * grid, dim)).astype(np.float32)
    where = rng.integers(1, 1 + grid * grid, size=labels.size)
    tokens[np.arange(labels.size), where] += proto[labels]
    return tokens, labels, rng.random((classes, 3)) + np.eye(classes, 3)


@pytest.mark.parametrize("mode", ["joint", "identity", "reference"])
def test_stage1_modes_train_what_they_should_and_never_read_other_rows(mode):
    tokens, labels, att = _toy()
    train = np.flatnonzero(labels < 3)                              # class 3 plays unseen
    tokens[labels == 3] = np.nan                                    # a read of any other row would poison the loss
    cfg = SOVRConfig(fde=mode, pre_iters=100, lr=3e-3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = SOVR(6, 2, attribute_vectors(3), cfg)
    model, log = train_sovr(tokens, train, labels[train], np.array([0, 1, 2]), att, cfg, seed=0)
    assert math.isfinite(log["loss_last"]) and log["loss_last"] < log["loss_first"] and log["batch_images"] == 48
    assert not torch.equal(model.ara.w2, init.ara.w2)               # ARA always trains
    if mode == "identity":
        assert model.fde is None
    else:
        fde_moved = not torch.equal(model.fde.conv.weight, init.fde.conv.weight)
        assert fde_moved == (mode == "joint")                       # the reference never steps FDE
        assert torch.equal(model.fde.queries, init.fde.queries) or mode == "joint"
    x = extract(model, tokens, train[:5], batch=2)
    assert x.shape == (5, 6) and np.isfinite(x).all()
    same = extract(model, tokens, train[:5][::-1])                  # rows come back in the asked order
    assert np.allclose(same[::-1], x, atol=1e-6)
