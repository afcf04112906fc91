"""D2SC DRG negative sampling (spec d2sc §5 step 6, option drg_neg_sampling=mismatch_att).

Real c paired with a wrong class attribute counts as fake: the DRG critic loss gains
gamma_x0 * ratio * E D_c0(c_0[idx], a_wrong), idx = ceil(ratio*B) random batch rows, a_wrong the
attribute of a seen class other than the row's own.
"""

import copy
import hashlib

import pytest
import torch

from d2sc_toy import toy_data
from zsl import losses
from zsl.errors import UserError
from zsl.models.d2sc import D2SC

TINY = dict(noise_dim=8, gen_hidden=32, ngh=16, ndh=32, drg_epochs=1, dfg_epochs=1, batch_size=32,
            critic_iter=2, syn_num=10, syn_num_drg=10)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices; also makes the golden values below exact


def _model(seed=5, **over):
    return D2SC({**TINY, **over}, toy_data(per_class=12), "cpu", seed)


def test_mismatched_classes_never_the_own_class_and_cover_all_others():
    classes = torch.tensor([2, 5, 7, 9])
    # hand: pos(7) = 2 -> classes[(2 + 1 + 0) % 4] = 9; pos(9) = 3 -> classes[(3 + 1 + 2) % 4] = 7
    got = losses.mismatched_classes(torch.tensor([7, 9]), classes, torch.tensor([0, 2]))
    assert got.tolist() == [9, 7]
    for own in classes.tolist():
        wrong = losses.mismatched_classes(torch.full((3,), own), classes, torch.arange(3))
        assert sorted(wrong.tolist()) == sorted(set(classes.tolist()) - {own})


def test_mismatched_pair_score_matches_hand_computation():
    # a linear critic D(c, a) = c.u + a.v scores each pair; the term is the mean over the chosen rows
    u, v = torch.tensor([1.0, -2.0]), torch.tensor([10.0, 0.0, 100.0])
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    c = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 2])
    rows, offsets = torch.tensor([2, 0]), torch.tensor([0, 1])
    # row 2 (class 2): wrong class (2+1+0)%3 = 0 -> 0*1 + 3*(-2) + 10 = 4
    # row 0 (class 0): wrong class (0+1+1)%3 = 2 -> 1 - 2 + 100 = 99
    score = losses.mismatched_pair_score(lambda cc, aa: cc @ u + aa @ v, c, y, emb, torch.arange(3), rows, offsets)
    assert score.item() == pytest.approx((4 + 99) / 2)
    assert losses.n_mismatched(64, 0.25) == 16 and losses.n_mismatched(64, 0.1) == 7 and losses.n_mismatched(64, 0.0) == 0


def _first_critic_loss(m):
    """(critic loss of the first DRG critic step, its batch (c0, y), RNG state before its negatives are drawn)."""
    seen = {}
    batch, backward = m._batch, m._backward

    def record_batch():
        out = batch()
        seen.setdefault("batch", (out[1], out[3]))
        return out

    def record_backward(loss, nets):
        if "loss" not in seen:
            seen.update(loss=loss.detach().clone(), D_c0=copy.deepcopy(m.nets["D_c0"]))
        backward(loss, nets)

    def record_mismatch_draws(b):
        seen.setdefault("rng", m.gens[0].get_state())
        return mismatch_draws(b)

    mismatch_draws = m._drg_mismatch_draws
    m._batch, m._backward, m._drg_mismatch_draws = record_batch, record_backward, record_mismatch_draws
    m.train_epoch()
    return seen


def test_critic_loss_gains_exactly_the_weighted_mismatched_term():
    ratio, gamma_x0 = 0.25, 1.5
    off = _first_critic_loss(_model(gamma_x0=gamma_x0))
    on = _first_critic_loss(_model(gamma_x0=gamma_x0, drg_neg_sampling="mismatch_att", drg_neg_ratio=ratio))
    # the negatives of the first critic step, redrawn from the RNG state the on-run had when drawing them
    g = torch.Generator().manual_seed(0)
    g.set_state(on["rng"])
    c0, y = off["batch"]
    B = c0.shape[0]
    k = -(-B // 4)                                  # ceil(0.25 * 32) = 8
    rows = torch.randperm(B, generator=g)[:k].tolist()
    seen = sorted(set(toy_data(per_class=12).seen_classes.tolist()))
    offsets = torch.randint(0, len(seen) - 1, (k,), generator=g).tolist()
    emb = torch.as_tensor(toy_data(per_class=12).class_emb)
    D = off["D_c0"]
    scores = []
    for r, o in zip(rows, offsets):   # D_c0 by hand: fc2(LReLU(W_s c + W_a a + b))
        wrong = seen[(seen.index(int(y[r])) + 1 + o) % len(seen)]
        assert wrong != int(y[r])
        with torch.no_grad():
            h = torch.nn.functional.leaky_relu(D.fc1_subject.weight @ c0[r] + D.fc1_cond.weight @ emb[wrong]
                                               + D.fc1_cond.bias, 0.2)
            scores.append(float(D.fc2.weight[0] @ h + D.fc2.bias[0]))
    term = gamma_x0 * ratio * sum(scores) / k
    assert on["loss"].item() - off["loss"].item() == pytest.approx(term, rel=1e-4, abs=1e-5)
    assert abs(term) > 1e-4                          # the term is not vacuous


# Recorded from main @ 62d94f0 (before the option existed), this seed/config, one thread:
# DRG epoch 1 d_loss, generator-state digest, float64 sum of D_c0's parameters.  The parameter sum
# is compared to float rounding: the fused critic/penalty backward (branch drgspeed) sums the same
# gradients in another order.
BEFORE = (19.45112419128418, "83d791994a0feb44", 0.7892403798105079)


def test_option_off_is_bit_identical_to_before_and_keeps_the_rng_stream():
    m = _model()
    out = m.train_epoch()
    digest = hashlib.sha256(m.gens[0].get_state().numpy().tobytes()).hexdigest()[:16]
    d_c0 = sum(float(p.double().sum()) for p in m.nets["D_c0"].parameters())
    assert (out["d_loss"], digest) == BEFORE[:2]
    assert d_c0 == pytest.approx(BEFORE[2], rel=1e-6)
    assert "neg_score" not in out


def test_option_on_trains_and_logs_the_score():
    m = _model(drg_neg_sampling="mismatch_att", drg_neg_ratio=1.0)
    out = m.train_epoch()
    assert torch.isfinite(torch.tensor(out["neg_score"])) and out["stage"] == "DRG"


@pytest.mark.parametrize("over,match", [
    ({"drg_neg_sampling": "shuffle"}, "drg_neg_sampling"),
    ({"drg_neg_sampling": "mismatch_att", "drg_neg_ratio": 1.5}, r"drg_neg_ratio.*\[0, 1\]"),
    ({"drg_neg_sampling": "mismatch_att", "drg_neg_ratio": -0.1}, r"drg_neg_ratio.*\[0, 1\]"),
    ({"drg_neg_ratio": 0.5}, "no effect"),
])
def test_bad_neg_sampling_options_raise_user_error(over, match):
    with pytest.raises(UserError, match=match):
        _model(**over)
