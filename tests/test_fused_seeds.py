"""Fused seeds: K members trained as one batched D2SC reproduce the K plain runs, member by member.

The runs here are a few iterations long: over hundreds, a LeakyReLU input within rounding of zero
eventually flips the gradient penalty's gradient and the member becomes another sample of its seed's
training (zsl.models.d2sc module docstring)."""

import pytest
import torch

from d2sc_toy import toy_data
from zsl.errors import UserError
from zsl.models.d2sc import D2SC
from zsl.models.d2sc_nets import Critic

TINY = dict(noise_dim=8, gen_hidden=32, ngh=24, ndh=40, batch_size=16, critic_iter=2, iters_per_epoch=3,
            drg_epochs=2, dfg_epochs=2, syn_num_drg=20, syn_num=20, classifier_epochs=3, classifier_batch=32,
            eval_views=["V", "VC"])
VARIANTS = {
    "corrected": {},
    "reference": dict(drg_generator_input="reference", drg_semantic_loss=False, s2v_trainable=False,
                      mmd_bandwidths="reference", encoder_betas="reference", vae_recon="mean",
                      batch_sampling="permutation", grad_clip=0.05, freeze_dec=False),
}


def _stack(critics: list[Critic], **kw) -> Critic:
    fused = Critic(6, 10, members=len(critics), **kw)
    states = [c.state_dict() for c in critics]
    fused.load_state_dict({k: torch.stack([s[k] for s in states]) for k in states[0]})
    return fused


def test_stacked_critic_scores_penalty_and_gradients_match_each_member():
    torch.manual_seed(0)
    plain = [Critic(6, 10, att_dim=4) for _ in range(3)]
    fused = _stack(plain, att_dim=4)
    b = 5
    real, fake, u = torch.rand(3, b, 6), torch.rand(3, b, 6), torch.rand(3, b, 1)
    mix, a = u * real + (1 - u) * fake, torch.randn(3, b, 4)
    w = torch.randn(3, 2 * b)   # an arbitrary weighting of the scores, so every gradient path counts
    r, f, gp = fused.scores_and_penalty(real, fake, mix, fused.condition(a=a))
    (w[:, :b] * r + w[:, b:] * f).sum().add(gp.sum()).backward()
    for k, c in enumerate(plain):
        rk, fk, gpk = c.scores_and_penalty(real[k], fake[k], mix[k], c.condition(a=a[k]))
        torch.testing.assert_close(r[k], rk)
        torch.testing.assert_close(f[k], fk)
        torch.testing.assert_close(gp[k], gpk)
        ((w[k, :b] * rk + w[k, b:] * fk).sum() + gpk).backward()
        for (name, p), pf in zip(c.named_parameters(), fused.parameters()):
            torch.testing.assert_close(pf.grad[k], p.grad, msg=name)
        torch.testing.assert_close(fused(real, fused.condition(a=a))[k], c(real[k], c.condition(a=a[k])))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_members_train_and_score_as_their_plain_runs(variant):
    data = toy_data()
    config = {**TINY, **VARIANTS[variant]}
    seeds = [3, 5]
    fused = D2SC(config, data, "cpu", seeds)
    plain = [D2SC(config, data, "cpu", s) for s in seeds]
    for k, m in enumerate(plain):   # same initial weights
        for name, v in m.nets.state_dict().items():
            assert torch.equal(fused.member_nets(k)[name], v), name
    for _ in range(fused.epochs_total):
        out = fused.train_epoch()
        outs = [m.train_epoch() for m in plain]
        for key in ("g_loss", "d_loss", "gp"):
            assert out[key] == pytest.approx(sum(o[key] for o in outs) / 2, rel=1e-3, abs=1e-4), key
        assert out["stage"] == outs[0]["stage"]
    for k, m in enumerate(plain):
        for name, v in m.nets.state_dict().items():
            # A critic's output bias cancels in every critic term (real minus fake score), so its
            # gradient is zero up to rounding, which Adam normalises to lr-sized steps of either sign;
            # the bias shifts all scores alike and changes nothing else.  Every other weight agrees
            # to ~1e-8 (measured).
            atol = 1e-2 if name.startswith("D_") and name.endswith("fc2.bias") else 1e-6
            torch.testing.assert_close(fused.member_nets(k)[name], v, rtol=1e-4, atol=atol, msg=name)
        torch.testing.assert_close(fused.lam[k], m.lam)
    scores, each = fused.evaluate(), [m.evaluate() for m in plain]
    assert scores["members"] == 2 and scores["stage"] == "DFG"
    for key in ("S", "U", "H", "ZSL", "H_VC"):
        values = torch.tensor([e[key] for e in each], dtype=torch.float64)
        assert scores[key] == pytest.approx(float(values.mean()), abs=1e-6), key
    assert scores["H_sd"] == pytest.approx(float(torch.tensor([e["H"] for e in each], dtype=torch.float64).std()),
                                           abs=1e-6)


def test_fused_resume_continues_to_the_uninterrupted_run():
    data, seeds = toy_data(), [0, 1]
    whole = D2SC(TINY, data, "cpu", seeds)
    first = D2SC(TINY, data, "cpu", seeds)
    for _ in range(3):
        whole.train_epoch()
    first.train_epoch()
    state = first.state_dict()
    resumed = D2SC(TINY, data, "cpu", seeds)
    resumed.load_state_dict(state)
    resumed.train_epoch()
    resumed.train_epoch()
    for name, v in whole.nets.state_dict().items():
        assert torch.equal(resumed.nets.state_dict()[name], v), name
    with pytest.raises(UserError, match="fused run of 2 seeds"):
        D2SC(TINY, data, "cpu", 0).load_state_dict(state)     # a fused checkpoint is not a plain run's


@pytest.mark.parametrize("seeds, option, match", [
    ([1, 1], {}, "must differ"),
    ([0, 1], {"drg_neg_sampling": "mismatch_att", "drg_neg_ratio": 0.5}, "drg_neg_sampling"),
    ([0, 1], {"monitor_eval_seen": True}, "monitor_eval_seen"),
])
def test_fused_runs_refuse_what_they_cannot_fuse(seeds, option, match):
    with pytest.raises(UserError, match=match):
        D2SC({**TINY, **option}, toy_data(), "cpu", seeds)


def test_a_search_with_fused_seeds_ranks_trials_on_the_members_mean(ray_session, tmp_path):
    """A real D2SC search with --seeds 2: every scored row carries each dataset's member count and H sd; the
    objective is the members' mean H."""
    from hpo.experiment import SearchOptions
    from hpo.report import read_trials
    from hpo.tuner import run_search

    space = tmp_path / "space.yaml"
    fixed = {**TINY, "eval_views": "[V]", "drg_epochs": 1, "dfg_epochs": 2}
    space.write_text("model: d2sc\npreset: small\nparams:\n"
                     "  dfg_lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
                     + "".join(f"  {k}: {{type: fixed, value: {v}}}\n" for k, v in fixed.items()))
    opts = SearchOptions(space=str(space), datasets=["sim-AWA2"], num_samples=2, max_concurrent=2, name="fused",
                         storage_path=str(tmp_path), seed=0, seeds=2, scheduler="fifo", max_failures=0, verbose=0,
                         state_key=str(tmp_path / "key"))
    summary = run_search(opts)
    assert summary.trials == 2 and summary.errored == 0
    for t in read_trials(tmp_path / "fused"):
        scored = [r for r in t.rows if r["stage"] == "scoring"]
        assert scored and all(r["sim-AWA2/members"] == 2 and r["sim-AWA2/H_sd"] >= 0 for r in scored)
        assert all(r["objective"] == pytest.approx(r["sim-AWA2/H"]) for r in scored)


def test_search_refuses_fused_seeds_for_a_model_without_them(tmp_path):
    from hpo.experiment import SearchOptions
    from hpo.tuner import run_search
    from search_fixtures import eszsl_space

    space = tmp_path / "space.yaml"
    space.write_text(eszsl_space())
    opts = SearchOptions(space=str(space), datasets=["sim-AWA2"], num_samples=1, name="x", storage_path=str(tmp_path),
                         seeds=2, verbose=0, state_key=str(tmp_path / "key"))
    with pytest.raises(UserError, match="does not train fused seeds"):
        run_search(opts)
    assert not (tmp_path / "x").exists()
