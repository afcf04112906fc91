"""Benchmark: does fusing K runs into one batched model pay, at a given width, on a given device?

Kernel-level measurement for the fused-runs design (issue #13), before any trainer is fused: one
D2SC-DFG-shaped training step -- a generator MLP [B, in] -> hidden -> out and a critic that scores
3B subject rows (real, fake, interpolates) -> hidden -> 1, forward, backward and an Adam step of
both -- done for K members three ways:

  separate  K independent modules stepped one after another (what K trials cost today);
  bmm       parameters stacked on a leading K axis, batched matmuls (torch.baddbmm), one Adam;
  vmap      torch.func.vmap over functional_call of K stacked modules (torch.func.grad).

Prints member-steps per second of each and the speed-up over ``separate``.  Random data; asserts
nothing; the trainer-level figures belong in a trainer benchmark.

    python bench/fusion_kernels.py --device cpu --threads 2 --widths demo,cpu
    python bench/fusion_kernels.py --device cuda --widths demo,cpu,paper
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from d2sc import _sync  # noqa: E402  (bench/d2sc.py)

# (input dim of the generator = noise + condition + feature, hidden width, feature dim), batch 64
WIDTHS = {
    "demo": (32 + 3 * 16 + 64, 256, 64),       # demo profile: 256-wide nets on 64-d simulated features
    "cpu": (85 + 3 * 85 + 2048, 512, 2048),    # cpu profile: 512-wide nets on 2048-d features
    "paper": (312 + 3 * 85 + 2048, 4096, 2048),  # paper widths (AWA2 shapes)
}
B = 64


class Step(nn.Module):
    """Generator G: [B, d_in] -> h -> R (sigmoid); critic D: [3B, R] -> h -> 1."""

    def __init__(self, d_in: int, hidden: int, feat: int):
        super().__init__()
        self.G = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, feat), nn.Sigmoid())
        self.D = nn.Sequential(nn.Linear(feat, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The step's loss (a scalar)."""
        fake = self.G(z)
        scores = self.D(torch.cat([real, fake, 0.5 * (real + fake)]))
        return scores[B:2 * B].mean() - scores[:B].mean() + (fake - real).pow(2).mean()


class StackedStep(nn.Module):
    """The same step with each Linear's weight stacked on a leading K axis: x [K, n, in] -> [K, n, out]."""

    def __init__(self, k: int, d_in: int, hidden: int, feat: int):
        super().__init__()
        def lin(i, o):
            return nn.ParameterList([nn.Parameter(torch.randn(k, o, i) * 0.02), nn.Parameter(torch.zeros(k, 1, o))])
        self.g1, self.g2, self.d1, self.d2 = lin(d_in, hidden), lin(hidden, feat), lin(feat, hidden), lin(hidden, 1)

    @staticmethod
    def _linear(p, x):
        return torch.baddbmm(p[1], x, p[0].transpose(1, 2))

    def loss(self, z: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        act = nn.functional.leaky_relu
        fake = torch.sigmoid(self._linear(self.g2, act(self._linear(self.g1, z), 0.2)))
        subj = torch.cat([real, fake, 0.5 * (real + fake)], 1)
        scores = self._linear(self.d2, act(self._linear(self.d1, subj), 0.2))[..., 0]
        per_member = scores[:, B:2 * B].mean(1) - scores[:, :B].mean(1) + (fake - real).pow(2).mean((1, 2))
        return per_member.sum()   # members' gradients stay independent


def _time(step, device: torch.device, reps: int) -> float:
    step()
    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step()
    _sync(device)
    return (time.perf_counter() - t) / reps


def separate(k: int, shape, device):
    mods = [Step(*shape).to(device) for _ in range(k)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-4) for m in mods]
    data = [(torch.randn(B, shape[0], device=device), torch.rand(B, shape[2], device=device)) for _ in range(k)]

    def step():
        for m, o, (z, x) in zip(mods, opts, data):
            o.zero_grad(set_to_none=True)
            m(z, x).backward()
            o.step()
    return step


def stacked(k: int, shape, device):
    m = StackedStep(k, *shape).to(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    z, x = torch.randn(k, B, shape[0], device=device), torch.rand(k, B, shape[2], device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        m.loss(z, x).backward()
        opt.step()
    return step


def vmapped(k: int, shape, device):
    mods = [Step(*shape).to(device) for _ in range(k)]
    params, _ = stack_module_state(mods)
    base = Step(*shape).to("meta")
    opt = torch.optim.Adam(list(params.values()), lr=1e-4)
    z, x = torch.randn(k, B, shape[0], device=device), torch.rand(k, B, shape[2], device=device)
    grads_of = vmap(grad(lambda p, z1, x1: functional_call(base, p, (z1, x1))))

    def step():
        g = grads_of(params, z, x)
        for name, leaf in params.items():
            leaf.grad = g[name]
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="demo,cpu")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"fused-step benchmark on {name}, torch {torch.__version__}; batch {B}; member-steps/s (speed-up vs separate)")
    for w in args.widths.split(","):
        shape = WIDTHS[w]
        for k in map(int, args.ks.split(",")):
            reps = max(2, args.reps // (k if w == "paper" and device.type == "cpu" else 1))
            rates = {}
            for label, make in (("separate", separate), ("bmm", stacked), ("vmap", vmapped)):
                try:
                    rates[label] = k / _time(make(k, shape, device), device, reps)
                except (RuntimeError, torch.OutOfMemoryError) as e:   # report, go on
                    rates[label] = float("nan")
                    print(f"  {w} K={k} {label}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            sep = rates["separate"]
            print(f"{w:6s} K={k:2d}  " + "  ".join(f"{lab} {r:8.1f}/s ({r / sep:4.2f}x)" for lab, r in rates.items()),
                  flush=True)


if __name__ == "__main__":
    main()
