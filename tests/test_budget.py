"""CPU-second training budgets (genlab/callbacks/budget.py) and their split between two stages."""

from __future__ import annotations

from genlab.checkpoints import read_checkpoint
from genlab.pipeline import command, plan

FAST = ("model.test_k=2", "num_samples=4", "callbacks.progress_bar.refresh_rate=0", "threads=1")

def _used(ckpt: str) -> float:
    state = read_checkpoint(ckpt)["callbacks"]
    return next(v["used"] for k, v in state.items() if k.startswith("CPUBudget"))

def test_a_cpu_budget_stops_training_and_counts_across_a_resume(make_cfg):
    from genlab.train import run

    common = (*FAST, "trainer.max_epochs=1000", "trainer.max_steps=100000", "trainer.limit_val_batches=1")
    done = run(make_cfg(*common, "callbacks.cpu_budget.seconds=1.5", name="budget"))
    used = _used(done["checkpoints"]["last"])
    assert done["status"] == "finished" and 0 < done["global_step"] < 100000
    assert 1.5 <= used < 1.5 + 1.0  # stopped at the first step past the budget
    # resumed with a larger budget: the CPU time already used counts, so it trains for the difference only
    more = run(make_cfg(*common, "callbacks.cpu_budget.seconds=2.5", f"ckpt_path={done['checkpoints']['last']}",
                        name="more"))
    assert more["global_step"] > done["global_step"]
    assert 2.5 <= _used(more["checkpoints"]["last"]) < 2.5 + 1.0

def test_first_stage_share_splits_both_budgets_and_passes_its_part_on(make_cfg, tmp_path):
    cfg = make_cfg("model=ddpm_mlp", 'first_stage={overrides: ["model=vae_conv"], share: 0.25}',
                   "callbacks.cpu_budget.seconds=100", "trainer.max_time=00:00:20:00", name="pair")
    out = plan(cfg)
    assert out == tmp_path / "pair" / "stage1" and cfg.stage1 == str(out)
    assert cfg.callbacks.cpu_budget.seconds == 75.0 and cfg.trainer.max_time == "00:00:15:00"
    cmd = command(cfg, out)
    assert "callbacks.cpu_budget.seconds=25.0" in cmd and "trainer.max_time=00:00:05:00" in cmd
    assert "model=vae_conv" in cmd and f"hydra.run.dir={out}" in cmd and "model=ddpm_mlp" not in cmd
