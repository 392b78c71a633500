#!/usr/bin/env python
"""Re-evaluate the test NLL of a trained run with other evaluation settings.

    python scripts/eval_nll.py <checkpoint.ckpt> [--n 250] [--batch 50] [key=value ...]

e.g. a flow-matching checkpoint with an adaptive ODE solver instead of the fixed-step one used
during training (fixed-step solvers can badly underestimate the NLL of a continuous flow):

    python scripts/eval_nll.py logs/runs/<date>/<time>/checkpoints/best.ckpt --n 250 \\
        model.test_likelihood.solver.method=dopri5 model.test_likelihood.solver.rtol=1e-5

Uses the first ``--n`` test examples (the test loader is not shuffled), prints the NLL in the
data's unit with its kind and the seconds it took.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from genlab.builders import load_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a genlab checkpoint")
    p.add_argument("--n", type=int, default=250, help="first n test examples")
    p.add_argument("--batch", type=int, default=50, help="examples per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides (key=value), e.g. evaluation settings")
    a = p.parse_intermixed_args()
    module, dm = load_run(a.ckpt, overrides=a.overrides)
    x = dm.splits["test"].x[: a.n]
    t0, total, kind = time.perf_counter(), torch.zeros((), dtype=torch.float64), None
    for i in range(0, len(x), a.batch):
        torch.manual_seed(a.seed * 1_000_003 + i)
        ll = module.family.log_likelihood(module.nets, {"x": x[i:i + a.batch]}, stage="test")
        if ll is None:
            print(f"{module.family.name} has no likelihood (nll_kind none)")
            return 1
        total, kind = total - ll.log_px.double().sum(), ll.kind
    nats = (total / len(x)).item()
    bpd = nats / (module.info.dims * math.log(2))
    print(f"test NLL on the first {len(x)} test examples: {bpd:.4f} {module.info.unit} ({kind}) = {nats:.2f} "
          f"nats/example, {time.perf_counter() - t0:.0f} s; overrides: {' '.join(a.overrides) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
