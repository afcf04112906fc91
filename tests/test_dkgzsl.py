"""DKGZSL (DKG²N on pooled features, spec shared/spec/dkgzsl.md): parameter counts at paper shapes, one
meta-fusion unit by hand, the schedule of optimiser steps, MFU gradient handling, resume equivalence, honesty
under the validation protocol, the variant label, configuration errors, presets and the search space
(the seam contract runs it too: tests/test_seam_contract.py)."""

import io
import json

import numpy as np
import pytest
import torch

from data_fixtures import write_sentinel_tiny
from zsl.data.types import ZSLData
from zsl.errors import UserError
from zsl.models import make_config, preset_names
from zsl.models.dkgzsl import DKGZSL, VARIANT_POOLED, build_nets
from zsl.models.dkgzsl_nets import MFU, count_parameters, fuse, inject
from zsl.trainer import Trainer

TINY = dict(hidden=16, batch_size=8, iters_per_pass=3, critic_iter=2, epochs=2, lr=1e-3, feed_lr=1e-4,
            syn_num=6, classifier_epochs=3)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread beats two here


def toy_data(n_classes=8, n_unseen=3, att_dim=6, feat_dim=10, per_class=12, protocol="validation", seed=0) -> ZSLData:
    """A small linear ZSL problem (simulated) with features min-max scaled on the training rows, as the data
    layer scales them (training rows in [0, 1])."""
    rng = np.random.default_rng(seed)
    att = rng.random((n_classes, att_dim)).astype(np.float32)
    proj = rng.normal(size=(att_dim, feat_dim)).astype(np.float32)
    seen, unseen = np.arange(n_classes - n_unseen), np.arange(n_classes - n_unseen, n_classes)

    def draw(classes, n):
        y = np.repeat(classes, n)
        return att[y] @ proj + 0.3 * rng.normal(size=(len(y), feat_dim)), y

    (tx, ty), (sx, sy), (ux, uy) = draw(seen, per_class), draw(seen, 4), draw(unseen, per_class)
    low, span = tx.min(0), np.ptp(tx, axis=0)
    scale = lambda x: ((x - low) / span).astype(np.float32)  # noqa: E731
    return ZSLData("toy", protocol, True, [f"c{k}" for k in range(n_classes)], att, seen, unseen,
                   scale(tx), ty, scale(sx), sy, scale(ux), uy)


def _model(data=None, seed=0, **over) -> DKGZSL:
    return DKGZSL({**TINY, **over}, data if data is not None else toy_data(), "cpu", seed)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------- networks

def test_parameter_counts_at_paper_shapes_match_a_hand_count():
    """AWA2 pooled ResNet features (C 2048), attributes (A 85), H 4096; and spec §10's ViT counts (C 768)."""
    A, C, H = 85, 2048, 4096
    with torch.device("meta"):
        nets = {k: count_parameters(v) for k, v in build_nets(A, H, C, seed=0).items()}
        vit = {k: count_parameters(v) for k, v in build_nets(A, H, 768, seed=0).items()}
    hand = {
        "G": (2 * A * H + H) + (H * C + C),                        # [z; a] -> H -> C
        "D": (C + A) * H + H + (H + 1),                            # [x; a] -> H -> 1
        "KTN": (A * H + H) + (H * C + C),                          # a -> H -> C
        "MFU": (H * H // 2 + H // 2 + H // 2 * H + H)              # MLP1 H -> H/2 -> H
               + (C * H // 2 + H // 2 + H // 2 * C + C)            # MLP2 C -> H/2 -> C
               + (A * H + H) + (A * C + C) + H + C,                # P1, P2, b1, b2
    }
    assert nets == hand == {"G": 9_091_072, "D": 8_744_961, "KTN": 8_742_912, "MFU": 25_710_592}
    assert vit == {"G": 3_846_912, "D": 3_502_081, "KTN": 3_498_752, "MFU": 20_355_072}  # spec §10, verbatim


def test_one_mfu_level_by_hand():
    """K₁ = MLP₁(D₁) + n(P₁ a) ⊙ b₁ on a 1-row example (A 2, H 4, C 3), every weight set by hand."""
    mfu = MFU(att_dim=2, hidden=4, feat_dim=3)
    with torch.no_grad():
        first, second = mfu.mlp1[0], mfu.mlp1[2]
        first.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [2, 0], [1, 1]]))
        second.bias.copy_(torch.tensor([0.0, 0, 0, 1]))
        mfu.proj1.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0], [0, 0]]))
        mfu.proj1.bias.zero_()
        mfu.b1.copy_(torch.tensor([1.0, 2, 3, 4]))
    d1 = torch.tensor([[1.0, -1, 2, 0]], requires_grad=True)
    d2, a = torch.zeros(1, 3), torch.tensor([[3.0, 4]])
    # MLP₁: [1, -1] -> ReLU [1, 0] -> [1, 0, 2, 0 + 0 + 1];  n(P₁ a) = [3, 4, 0, 0] / 5;  ⊙ b₁ = [0.6, 1.6, 0, 0]
    k1, k2 = mfu(d1, d2, a)
    assert torch.allclose(k1, torch.tensor([[1.6, 1.6, 2.0, 2.0]]))
    assert k2.shape == (1, 3)
    plain, _ = mfu(d1, d2, a, semantic=False)                      # the reference's synthesis: K₁ = MLP₁(D₁)
    assert torch.allclose(plain, torch.tensor([[1.0, 0.0, 2.0, 2.0]]))
    k1.sum().backward()
    assert d1.grad is None                                          # D is detached: nothing reaches the KTN
    assert torch.allclose(fuse(torch.ones(1, 2), torch.tensor([[0.0, 2.0]]), torch.tensor([5.0, 7.0])),
                          torch.tensor([[1.0, 8.0]]))
    assert torch.allclose(inject(torch.zeros(1, 3), torch.tensor([[3.0, 0, 4]]), 0.1), torch.tensor([[0.06, 0, 0.08]]))


def test_guided_generator_differs_from_plain_and_stays_in_unit_interval():
    model = _model()
    z, a = torch.randn(5, 6), model.emb[model.unseen[:1]].expand(5, -1)
    with torch.no_grad():
        plain, guided = model.generate(z, a, guided=False), model.generate(z, a, guided=True)
    assert plain.shape == guided.shape == (5, 10)
    assert not torch.allclose(plain, guided)
    assert float(guided.min()) > 0 and float(guided.max()) < 1


# ---------------------------------------------------------------- training schedule

def test_optimiser_step_schedule_of_one_epoch():
    """Pass 0: per iteration critic_iter × (KTN, D), then G; pass 1 the same with the MFU stepped after G."""
    model = _model(iters_per_pass=3, critic_iter=2)
    calls = []
    for name, opt in model.opts.items():
        step = opt.step
        opt.step = lambda *args, _name=name, _step=step, **kw: (calls.append(_name), _step(*args, **kw))[1]
    out = model.train_epoch()
    plain, guided = ["KTN", "D", "KTN", "D", "G"], ["KTN", "D", "KTN", "D", "G", "MFU"]
    assert calls == plain * 3 + guided * 3
    assert {k: calls.count(k) for k in model.opts} == {"G": 6, "D": 12, "KTN": 12, "MFU": 3}
    assert out["stage"] == "DKG2N" and out["iterations"] == 6 and model.epoch == 1
    assert all(np.isfinite(v) for k, v in out.items() if isinstance(v, float))
    assert {"g_loss_plain", "g_loss_guided", "ktn_loss", "wasserstein", "gp", "gp_lambda"} <= set(out)


def test_critic_step_leaves_generator_ktn_mfu_untouched_and_adaptive_lambda_moves():
    model = _model()
    before = {k: [p.clone() for p in model.nets[k].parameters()] for k in ("G", "MFU", "KTN")}
    x, a = model._batch()
    model._critic_step(x, a, guided=True)
    for k in ("G", "MFU", "KTN"):
        assert all(torch.equal(p, q) for p, q in zip(before[k], model.nets[k].parameters())), k
    model.train_epoch()
    assert float(model.lam) != 10.0                                  # ×/÷ 1.1 per iteration
    fixed = _model(adaptive_gp=False)
    fixed.train_epoch()
    assert float(fixed.lam) == 10.0


def test_mfu_gradients_zeroed_by_default_and_accumulated_in_the_reference_mode():
    """With optimiser steps disabled, two guided generator steps leave the MFU's gradient at the second step's
    gradient (default) or at the sum of both (mfu_grads=accumulate, the reference's missing zero_grad)."""
    data = toy_data()
    zero, acc = _model(data, mfu_grads="zero"), _model(data, mfu_grads="accumulate")
    grads = {}
    for name, model in (("zero", zero), ("acc", acc)):
        for opt in model.opts.values():
            opt.step = lambda *args, **kw: None
        a = model.emb[model.train_y[:8]]
        model._generator_step(a, guided=True)
        first = [p.grad.clone() for p in model.nets["MFU"].parameters()]
        model._generator_step(a, guided=True)
        grads[name] = (first, [p.grad.clone() for p in model.nets["MFU"].parameters()])
    (g1, g2), (h1, h12) = grads["zero"], grads["acc"]
    for p1, p2, q1, q12 in zip(g1, g2, h1, h12):
        assert torch.equal(p1, q1)
        assert torch.allclose(q12, p1 + p2, atol=1e-6)
        assert not torch.allclose(p2, q12)


@pytest.mark.parametrize("mfu_grads", ["zero", "accumulate"])
def test_resume_matches_straight_run(mfu_grads):
    """2 epochs straight vs 1 epoch, evaluate, save/load (torch.save round trip) into a fresh model, 1 epoch:
    identical weights, optimiser states, λ, scores."""
    data = toy_data()
    straight = _model(data, seed=5, mfu_grads=mfu_grads)
    straight.train_epoch()
    straight.train_epoch()
    first = _model(data, seed=5, mfu_grads=mfu_grads)
    first.train_epoch()
    first.evaluate()                                                  # must not perturb the training stream
    resumed = _model(data, seed=77, mfu_grads=mfu_grads)
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    resumed.train_epoch()
    for (k, v), (k2, w) in zip(straight.nets.state_dict().items(), resumed.nets.state_dict().items()):
        assert k == k2 and torch.equal(v, w), k
    assert torch.equal(straight.lam, resumed.lam) and resumed.epoch == 2
    for p, q in zip(straight.nets["MFU"].parameters(), resumed.nets["MFU"].parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad))
    a, b = straight.evaluate(), resumed.evaluate()
    assert {k: a[k] for k in ("S", "U", "H", "ZSL")} == {k: b[k] for k in ("S", "U", "H", "ZSL")}


# ---------------------------------------------------------------- evaluation and honesty



@pytest.fixture(scope="module")
def sentinel_root(tmp_path_factory):
    """A tiny xlsa17 folder whose test images (test_seen, test_unseen) carry SENTINEL features."""
    root = tmp_path_factory.mktemp("dkgzsl")
    write_sentinel_tiny(root / "TINY")
    return str(root)


def test_validation_evaluation_never_touches_test_rows(sentinel_root, monkeypatch):
    """Under the validation protocol the classifiers train and score on trainval rows only: no SENTINEL row
    reaches the model, and the rows the evaluation is handed are the data's validation sets."""
    from zsl import run as run_engine
    from zsl.models import dkgzsl

    config = make_config("dkgzsl", None, "TINY", {**TINY, "epochs": 1})
    spec = run_engine.RunSpec("dkgzsl", "TINY", None, "validation", 0, 0, "small", sentinel_root, config)
    run = run_engine.Run(spec)
    model, data = run.trainer, run.data
    handed = []
    real = dkgzsl.gzsl_evaluate
    monkeypatch.setattr(dkgzsl, "gzsl_evaluate", lambda **kw: handed.append(kw) or real(**kw))
    scores = run.run_to_end()
    (kw,) = handed
    for key in ("train_x", "eval_seen_x", "eval_unseen_x", "syn_x"):
        assert float(kw[key].abs().max()) < 10.0, key                 # a SENTINEL row would scale to ~1e6
    assert torch.equal(kw["eval_seen_y"], torch.as_tensor(data.eval_seen_y))
    assert torch.equal(kw["eval_unseen_x"], torch.as_tensor(data.eval_unseen_x))
    assert kw["cfg"].selection == "last"
    assert model.variant == scores["variant"] == VARIANT_POOLED
    assert 0.0 <= scores["H"] <= 100.0


def test_best_classifier_epoch_refused_under_the_final_protocol():
    with pytest.raises(UserError, match="classifier_selection"):
        _model(toy_data(protocol="final"), classifier_selection="best")
    for protocol in ("validation", "reference"):
        _model(toy_data(protocol=protocol), classifier_selection="best")


def test_evaluate_reports_percentages_and_the_variant_and_is_repeatable():
    model = _model()
    model.train_epoch()
    first, second = model.evaluate(), model.evaluate()
    assert isinstance(model, Trainer)
    assert all(0.0 <= first[k] <= 100.0 for k in ("S", "U", "H", "ZSL"))
    assert first["variant"] == "DKGZSL w/o SOVR (pooled features)"
    assert {k: first[k] for k in ("S", "U", "H", "ZSL")} == {k: second[k] for k in ("S", "U", "H", "ZSL")}
    syn, y = model.synthesize(model.unseen, 7, seed=3)
    assert syn.shape == (3 * 7, 10) and torch.equal(y.unique(), model.unseen)
    chunked, _ = _model(synthesis_chunk=5).synthesize(model.unseen, 7, seed=3)
    assert torch.allclose(_model().synthesize(model.unseen, 7, seed=3)[0], chunked, atol=1e-6)


def test_zsl_train_prints_and_saves_the_variant(sentinel_root, tmp_path, capsys):
    from zsl.train import main

    out = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in {**TINY, "epochs": 1}.items()]
    assert main(["--model", "dkgzsl", "--dataset", "TINY", "--data-root", sentinel_root, "--out", str(out),
                 "--device", "cpu", *sets]) == 0
    printed = capsys.readouterr().out
    assert f"model: dkgzsl: {VARIANT_POOLED}" in printed and f"model variant: {VARIANT_POOLED}" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["variant"] == results["final"]["variant"] == VARIANT_POOLED
    assert all(row["variant"] == VARIANT_POOLED for row in results["history"])


# ---------------------------------------------------------------- configuration, presets, space

@pytest.mark.parametrize("over,match", [
    ({"mfu_grads": "sometimes"}, "'mfu_grads'"),
    ({"synthesis_mfu": "half"}, "'synthesis_mfu'"),
    ({"hidden": 0}, "'hidden'"),
    ({"lr": 0.0}, "'lr'"),
    ({"iters_per_pass": -1}, "'iters_per_pass'"),
    ({"beta1": 1.0}, "'beta1'"),
    ({"mfu_scale": -0.1}, "'mfu_scale'"),
    ({"syn_num": "many"}, "'syn_num'"),
])
def test_bad_config_raises_one_sentence(over, match):
    with pytest.raises(UserError, match=match):
        _model(**over)


def test_features_outside_the_unit_interval_are_refused_and_rounding_is_clamped_on_a_copy():
    data = toy_data()
    data.train_x[0, 0] = np.float32(1.0 + 2e-6)                     # scaler rounding: clamped, the data untouched
    assert float(_model(data).train_x.max()) == 1.0 and data.train_x[0, 0] > 1.0
    data.train_x = data.train_x * 3.0
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        _model(data)


def test_sentence_embeddings_are_normalised_per_class():
    data = toy_data()
    data.class_emb = data.class_emb * 20.0                          # like CUB's un-normalised sent rows
    model = _model(data)
    assert torch.allclose(model.emb.norm(dim=1), torch.ones(8))


def test_presets_hold_the_spec_values():
    assert {"paper", "reference", "cpu"} <= set(preset_names("dkgzsl"))
    spec6 = {  # spec §6: batch, epochs, γ, lr, feed_lr, syn_num, classifier_lr
        "AWA2": (64, 600, 1.0, 1e-4, 1e-5, 1400, 5e-4),
        "CUB": (128, 500, 10.0, 1e-4, 1e-5, 500, 1e-3),
        "SUN": (128, 400, 10.0, 2e-4, 1e-4, 80, 5e-4),
    }
    keys = ("batch_size", "epochs", "gamma_adv", "lr", "feed_lr", "syn_num", "classifier_lr")
    for dataset, values in spec6.items():
        for preset in ("paper", "reference"):
            cfg = make_config("dkgzsl", preset, dataset)
            assert tuple(cfg[k] for k in keys) == values, (preset, dataset)
            assert (cfg["hidden"], cfg["critic_iter"], cfg["lambda1"], cfg["classifier_epochs"]) == (4096, 5, 10.0, 25)
            assert cfg["classifier_batch"] == 0 and cfg["ktn_weight"] == 0.1 and cfg["mfu_scale"] == 0.1
            reference = preset == "reference"
            assert cfg["mfu_grads"] == ("accumulate" if reference else "zero")
            assert cfg["synthesis_mfu"] == ("drop_semantic" if reference else "full")
    unknown = make_config("dkgzsl", "paper", "ImageNet")
    assert unknown["hidden"] == 4096 and unknown["epochs"] == 600    # default entry + Config defaults (AWA2)
    assert make_config("dkgzsl", "cpu", "sim-CUB")["hidden"] < 4096


def test_search_space_loads_and_its_published_point_is_the_reference_awa2_config():
    from hpo.spaces import check_model_ranges, load_space, published_point

    space = load_space("dkgzsl")
    assert space.model == "dkgzsl" and {"gpu", "cpu", "demo"} <= set(space.profiles)
    point = published_point(space)
    paper = make_config("dkgzsl", "reference", "AWA2")
    assert all(paper[k] == v for k, v in point.items()), point
    bases = {d: make_config("dkgzsl", space.preset, d) for d in ("AWA2", "CUB", "SUN")}
    check_model_ranges(space, bases)
    for profile in ("cpu", "demo"):
        small, preset, overrides = space.specialise(profile)
        check_model_ranges(small, {"sim-AWA2": {**make_config("dkgzsl", preset, "sim-AWA2"), **overrides}})


def test_region_features_reach_the_model_through_the_run_engine_and_the_variant_says_which():
    from zsl.run import Run, RunSpec

    config = make_config("dkgzsl", None, "sim-AWA2", {**TINY, "epochs": 1, "region_tag": "sim-g4",
                                                       "region_features": "mean"})
    run = Run(RunSpec("dkgzsl", "sim-AWA2", None, "validation", 0, 0, "small", None, config), "cpu", 1)
    assert run.trainer.variant == "DKGZSL w/o SOVR (mean-pooled regions_sim-g4)"
    assert run.data.provenance()["features"] == "mean-pooled regions_sim-g4"
    assert run.run_to_end()["variant"] == run.trainer.variant
    assert _model().variant == VARIANT_POOLED  # no region_tag: the pooled res101 features, as before
    assert _model(region_tag="sim-g4").variant == "DKGZSL (SOVR-refined regions_sim-g4, FDE joint)"
