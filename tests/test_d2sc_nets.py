"""D2SC critic: the fused scores + gradient-penalty path against autograd's double backward."""

import pytest
import torch

from zsl import losses
from zsl.models.d2sc_nets import Critic, init_weights


def _autograd_terms(critic, real, fake, mix, cond):
    """Reference: scores by forward(), penalty by autograd.grad with create_graph (double backward)."""
    scores = critic(torch.cat([real, fake]), cond)
    mix = mix.clone().requires_grad_(True)
    grad, = torch.autograd.grad(critic(mix, cond).sum(), mix, create_graph=True)
    s_real, s_fake = scores.chunk(2)
    return s_real, s_fake, losses.gradient_penalty(grad)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("with_mlp", [False, True])
def test_scores_and_penalty_match_double_backward(with_mlp, float64):
    """Values and every parameter gradient equal autograd's (float64), for a loss that weights each
    score row differently (like the DFG distillation) plus the penalty."""
    torch.manual_seed(0)
    B, S, H, A = 6, 5, 7, 3
    kw = dict(next_dim=S, att_dim=A, con_dim=4, emb_dim=A) if with_mlp else dict(att_dim=A)
    critic = Critic(S, H, **kw)
    init_weights(critic)
    with torch.no_grad():                                  # larger weights: both LReLU branches, ||g|| far from 1
        for p in critic.parameters():
            p.mul_(40.0)
    real, fake = torch.randn(B, S), torch.rand(B, S)
    mix = losses.interpolate(real, fake, torch.rand(B))
    cond_args = dict(x_next=torch.randn(B, S), a=torch.randn(B, A), c=torch.randn(B, 4)) if with_mlp \
        else dict(a=torch.randn(B, A))                     # with_mlp: gradients also reach phi(c)
    w_real, w_fake = torch.randn(B), torch.randn(B)
    results = []
    for terms in (_autograd_terms, Critic.scores_and_penalty):
        critic.zero_grad(set_to_none=True)
        s_real, s_fake, gp = terms(critic, real, fake, mix, critic.condition(**cond_args))
        ((w_real * s_real).sum() + (w_fake * s_fake).sum() + 10.0 * gp).backward(inputs=list(critic.parameters()))
        results.append(([s_real.detach(), s_fake.detach(), gp.detach()],
                        {k: p.grad.clone() for k, p in critic.named_parameters()}))
    (ref_vals, ref_grads), (vals, grads) = results
    assert ref_vals[2].item() > 0.1                        # the penalty is not trivially small
    for r, v in zip(ref_vals, vals):
        torch.testing.assert_close(v, r, rtol=1e-12, atol=1e-12)
    assert ref_grads.keys() == grads.keys()
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-10, atol=1e-12, msg=k)


def test_scores_and_penalty_refuse_subject_rows_that_need_gradients():
    critic = Critic(4, 8, att_dim=2)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="must not require gradients"):
        critic.scores_and_penalty(x.requires_grad_(True), x.detach(), x.detach(), critic.condition(a=torch.randn(3, 2)))
