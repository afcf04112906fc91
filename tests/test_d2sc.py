"""D2SC trainer: dimensions, option checks, iteration order and freezing, synthesis, resume."""

import io

import pytest
import torch

from d2sc_toy import toy_data
from zsl.errors import UserError
from zsl.models import make_config
from zsl.models.d2sc import D2SC

TINY = dict(noise_dim=8, gen_hidden=32, ngh=16, ndh=32, drg_epochs=2, dfg_epochs=2, batch_size=32,
            critic_iter=2, syn_num=10, syn_num_drg=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread beats two here


def _model(data=None, seed=0, **over):
    return D2SC({**TINY, **over}, data or toy_data(), "cpu", seed)


@pytest.mark.parametrize("name,A,dim_t", [("AWA2", 85, 0), ("CUB-att", 312, 7), ("CUB-sent", 1024, 0), ("SUN", 102, 0)])
def test_real_dimensions_one_epoch_each_stage(name, A, dim_t):
    """Real feature dims (R = C = 2048) and class-embedding widths, tiny hidden widths."""
    data = toy_data(R=2048, C=2048, A=A, K=6, n_unseen=2, per_class=4)
    m = _model(data, dim_t=dim_t, noise_dim=0, batch_size=8, critic_iter=1, drg_epochs=1, dfg_epochs=1)
    n, d_t = m.nets, dim_t or A
    assert n["G_c"].net[0].in_features == A + 2048 + 2 * A          # Z = A: [z; c; a; t-emb]
    assert n["G_x"].net[0].in_features == A + 3 * A + 2048
    assert n["D_ct"].in_features == 2 * 2048 + 2 * A             # true concatenation, any d_t
    assert n["D_xt"].in_features == 2 * 2048 + 3 * A
    assert n["D_xt"].time.dim_t == d_t
    for _ in range(2):
        out = m.train_epoch()
        assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k != "stage")
    assert out["stage"] == "DFG" and m.epoch == m.epochs_total == 2
    x, c, y = m.synthesize_features(torch.as_tensor(data.unseen_classes), 3, torch.Generator().manual_seed(0))
    assert x.shape == (6, 2048) and c.shape == (6, 2048) and y.tolist() == [4, 4, 4, 5, 5, 5]


def test_missing_second_view_uses_x_as_c():
    m = _model(toy_data(second_view=False))
    assert m.train_c is m.train_x and m.nets["G_c"].net[2].out_features == 32
    m.train_epoch()


@pytest.mark.parametrize("over,match", [
    ({"vae_recon": "median"}, "vae_recon"),
    ({"eval_views": ["VX"]}, "eval_views"),
    ({"lr": 1.0}, "unknown hyperparameter 'lr'"),
    ({"critic_iter": 0}, "critic_iter"),
    ({"iters_per_epoch": -1}, "iters_per_epoch"),
])
def test_bad_options_raise_user_error(over, match):
    with pytest.raises(UserError, match=match):
        _model(**over)


def test_selection_on_test_data_refused_under_final_protocol():
    with pytest.raises(UserError, match="drg_handoff"):
        _model(toy_data(protocol="final"), drg_handoff="best_zsl")
    with pytest.raises(UserError, match="classifier_selection"):
        _model(toy_data(protocol="final"), classifier_selection="best")
    _model(toy_data(protocol="reference"), drg_handoff="best_zsl")


def _steps(opt):
    return int(next(iter(opt.state.values()))["step"]) if opt.state else 0


def _params(m, name):
    return [p.detach().clone() for p in m.nets[name].parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_stage_order_step_counts_and_freezing():
    """critic_iter critic steps then one generator step per iteration; other stage's nets untouched."""
    m = _model(critic_iter=3, drg_epochs=1, dfg_epochs=1)
    it = m.iters_per_epoch
    dfg_before = {k: _params(m, k) for k in ("E", "G_x", "D_x0", "Dec_x", "S2V")}
    m.train_epoch()
    assert _steps(m.opts["D_c"]) == 3 * it and _steps(m.opts["Dec_c"]) == 3 * it and _steps(m.opts["G_c"]) == it
    assert all(_same(v, _params(m, k)) for k, v in dfg_before.items())
    g_c = _params(m, "G_c")
    m.train_epoch()
    assert _same(g_c, _params(m, "G_c"))                       # G_c is not trained in DFG
    assert _steps(m.opts["D_x"]) == 3 * it and _steps(m.opts["G_x"]) == it and _steps(m.opts["E"]) == it
    assert _steps(m.opts["Dec_x"]) == 3 * it                     # freeze_dec: only critic steps
    assert not _same(dfg_before["S2V"], _params(m, "S2V"))       # s2v_trainable default


@pytest.mark.parametrize("iters,batch", [(0, 32), (0, 7), (3, 32), (5, 7)])
def test_iters_per_epoch_sets_iterations_of_each_stage(iters, batch):
    """0: ceil(n_train/B) generator steps per epoch (spec); > 0: exactly that many, whatever n_train/B."""
    m = _model(iters_per_epoch=iters, batch_size=batch, critic_iter=1, drg_epochs=1, dfg_epochs=1)
    n = m.train_x.shape[0]
    expected = iters or -(-n // batch)
    assert m.iters_per_epoch == expected
    assert m.train_epoch()["iterations"] == expected and _steps(m.opts["G_c"]) == expected
    assert m.train_epoch()["iterations"] == expected and _steps(m.opts["G_x"]) == expected


def test_reference_switches_freeze_s2v_and_step_dec():
    m = _model(critic_iter=2, drg_epochs=0, dfg_epochs=1, s2v_trainable=False, freeze_dec=False)
    s2v = _params(m, "S2V")
    m.train_epoch()
    assert _same(s2v, _params(m, "S2V"))
    assert _steps(m.opts["Dec_x"]) == 3 * m.iters_per_epoch


def test_drg_critic_step_leaves_generator_unchanged():
    m = _model(critic_iter=1)
    g_c = _params(m, "G_c")
    m.nets["G_c"].requires_grad_(False)
    x0, c0, a, _ = m._batch()
    t = m._timesteps(c0.shape[0])
    c_t, c_next = m._pairs(c0, t)
    c0_hat, _ = m._drg_generate(c0, c_t, c_next, a, t)
    assert not c0_hat.requires_grad and _same(g_c, _params(m, "G_c"))


def test_synthesis_is_vectorised_one_call_and_in_unit_interval():
    m = _model()
    m.train_epoch()
    classes = torch.tensor([7, 9])
    g = torch.Generator().manual_seed(1)
    x, c, y = m.synthesize_features(classes, 5, g)
    assert x.shape == (10, 32) and c.shape == (10, 24) and y.tolist() == [7] * 5 + [9] * 5
    assert torch.all((x > 0) & (x < 1))
    xp, _, _ = m.synthesize_features(classes, 5, torch.Generator().manual_seed(1), progressive=True)
    assert xp.shape == x.shape and not torch.allclose(xp, x)


def test_adaptive_lambda_moves_and_is_off_when_disabled():
    m = _model(drg_epochs=0, dfg_epochs=1)
    m.train_epoch()
    assert m.lam.item() != pytest.approx(10.0)
    m2 = _model(drg_epochs=0, dfg_epochs=1, adaptive_gp=False)
    m2.train_epoch()
    assert m2.lam.item() == pytest.approx(10.0)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _run(m, n):
    return [m.train_epoch() for _ in range(n)]


def _losses(outs):
    return [{k: v for k, v in o.items() if k not in ("seconds", "stage")} for o in outs]


@pytest.mark.parametrize("stop,sampling", [(1, "random"), (3, "permutation")])
def test_resume_matches_uninterrupted_run(stop, sampling):
    """Stop inside a stage, with either batch sampling, reload into a fresh model, continue (the stage boundary and
    the scores after resume: tests/test_seam_contract.py, for every model)."""
    data = toy_data(per_class=12)
    full = _losses(_run(_model(data, seed=3, batch_sampling=sampling), 4))
    first = _model(data, seed=3, batch_sampling=sampling)
    head = _losses(_run(first, stop))
    state = _roundtrip(first.state_dict())
    second = _model(data, seed=99, batch_sampling=sampling)   # a different seed: state must override it
    second.load_state_dict(state)
    tail = _losses(_run(second, 4 - stop))
    got = head + tail
    assert len(got) == len(full)
    for a, b in zip(got, full):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k


def test_preset_files_resolve_for_every_dataset():
    for preset in ("paper", "zerodiff", "small"):
        for ds in ("AWA2", "CUB", "SUN", "sim-AWA2"):
            cfg = make_config("d2sc", preset, ds)
            assert cfg["drg_epochs"] >= 1 and cfg["dfg_epochs"] >= 1
    z = make_config("d2sc", "zerodiff", "AWA2")
    assert z["gamma_con_step"] == z["gamma_mmd"] == z["gamma_center"] == 0.0
    p = make_config("d2sc", "paper", "CUB")
    assert p["noise_dim"] == 1024 and p["gamma_mmd"] == 0.25 and p["gamma_recons"] == 0.01


def _needs_evaluation():
    return pytest.importorskip("zsl.evaluation", reason="zsl.evaluation (another helper's module) is not merged yet")


@pytest.mark.parametrize("drg_epochs", [1, 0])
def test_evaluate_leaves_training_stream_unchanged(drg_epochs):
    """Evaluating after epoch 1 (DRG, or DFG when drg_epochs=0) does not change the next epoch's losses."""
    _needs_evaluation()
    data = toy_data()
    plain = _model(data, drg_epochs=drg_epochs, dfg_epochs=2 - drg_epochs)
    evaluated = _model(data, drg_epochs=drg_epochs, dfg_epochs=2 - drg_epochs, classifier_epochs=2)
    _run(plain, 1)
    _run(evaluated, 1)
    res = evaluated.evaluate()
    assert res["stage"] == ("DRG" if drg_epochs else "DFG")
    assert {"S", "U", "H", "ZSL"} <= res.keys() and 0.0 <= res["H"] <= 100.0
    assert _losses(_run(plain, 1)) == _losses(_run(evaluated, 1))


def test_best_zsl_handoff_installs_best_drg_generator():
    _needs_evaluation()
    m = _model(toy_data(protocol="reference"), drg_epochs=2, dfg_epochs=1, drg_handoff="best_zsl",
               classifier_epochs=2)
    _run(m, 2)
    assert m.best_drg["ZSL"] >= 0.0
    best = m.best_drg["G_c"]
    assert all(torch.equal(v, best[k]) for k, v in m.nets["G_c"].state_dict().items())


def test_dfg_evaluation_views_are_suffixed():
    _needs_evaluation()
    m = _model(drg_epochs=1, dfg_epochs=1, eval_views=["V", "VC", "S"], classifier_epochs=2)
    _run(m, 2)
    res = m.evaluate()
    assert res["stage"] == "DFG" and {"H", "H_VC", "ZSL_S", "U_VC"} <= res.keys()


def test_with_epochs_splits_between_stages():
    assert D2SC.with_epochs({"drg_epochs": 300, "dfg_epochs": 300}, 10) == {"drg_epochs": 5, "dfg_epochs": 5}
    assert D2SC.with_epochs({"drg_epochs": 1, "dfg_epochs": 9}, 4) == {"drg_epochs": 1, "dfg_epochs": 3}
    assert D2SC.with_epochs({}, 1) == {"drg_epochs": 1, "dfg_epochs": 0}
