"""The generic module's contract with families: manual optimisation schedules, divergence checks."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch import nn

from genlab.data.toy import ToyDataModule
from genlab.families.base import Family, Likelihood, LossOutput
from genlab.metrics.likelihood import LogLikelihood
from genlab.module import GenerativeModule, TrainingDivergedError


class TwoGroups(Family):
    """Two scalar parameters pulled towards the batch mean by separate optimizers."""

    name = "two_groups"

    def __init__(self, schedule: list[str], diverge_at: int | None = None) -> None:
        super().__init__()
        self._schedule, self.diverge_at, self.calls = schedule, diverge_at, []

    def build(self, info):
        return nn.ModuleDict({"a": nn.Linear(1, 1, bias=False), "b": nn.Linear(1, 1, bias=False)})

    def param_groups(self, nets):
        return {"a": list(nets["a"].parameters()), "b": list(nets["b"].parameters())}

    def schedule(self):
        return self._schedule

    def loss(self, nets, batch, group=None):
        self.calls.append(group)
        target = batch["x"].float().mean()
        w = nets[group].weight.sum()
        # the other group's parameter also enters the loss: it must not move in this step
        other = nets["b" if group == "a" else "a"].weight.sum()
        return LossOutput((w - target) ** 2 + 0.1 * other**2, {"w": w.detach()})

    def diverged(self, out):
        return "w exploded" if self.diverge_at is not None and len(self.calls) > self.diverge_at else None


def _fit(family, steps, tmp_path, optimizer=torch.optim.SGD):
    dm = ToyDataModule(batch_size=16, seed=0)
    module = GenerativeModule(family, dm.info, functools.partial(optimizer, lr=0.1))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    return module, trainer, dm


def test_schedule_steps_one_optimizer_per_training_step_in_order(tmp_path):
    family = TwoGroups(["a", "a", "b"])
    module, trainer, dm = _fit(family, 9, tmp_path, torch.optim.Adam)
    assert not module.automatic_optimization
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 9 and family.calls == ["a", "a", "b"] * 3
    steps = [int(next(iter(opt.state.values()))["step"]) for opt in trainer.optimizers]
    assert steps == [6, 3]  # Adam's own step counters: a stepped twice per b step


def test_a_groups_step_leaves_the_other_groups_parameters_unchanged(tmp_path):
    family = TwoGroups(["a"])  # b never steps even though it is in every loss
    module, trainer, dm = _fit(family, 4, tmp_path)
    b0, a0 = module.nets["b"].weight.item(), module.nets["a"].weight.item()
    trainer.fit(module, datamodule=dm)
    assert module.nets["b"].weight.item() == b0 and module.nets["a"].weight.item() != a0


def test_a_family_reported_divergence_stops_before_the_update(tmp_path):
    family = TwoGroups(["a", "b"], diverge_at=3)
    module, trainer, dm = _fit(family, 10, tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"w exploded at step 3 \(family=two_groups") as err:
        trainer.fit(module, datamodule=dm)
    assert "no checkpoint was saved before it" in str(err.value) and trainer.global_step == 3


def test_ema_decay_warms_up_then_stays_at_its_setting():
    from genlab.callbacks.ema import warm_ema

    avg = torch.zeros(1)
    for n in range(3):  # decays 0.1, 2/11, 3/12: early updates move the average a lot
        avg = warm_ema(avg, torch.ones(1), torch.tensor(n), decay=0.999)
    assert avg.item() == pytest.approx(1 - 0.1 * (2 / 11) * (3 / 12))
    late = warm_ema(torch.zeros(1), torch.ones(1), torch.tensor(10**6), decay=0.999)
    assert late.item() == pytest.approx(0.001)


def test_the_grouped_ema_update_is_the_warm_ema_of_every_tensor():
    from genlab.callbacks.ema import EMAWarmup, warm_ema

    avg, cur = [torch.zeros(3), torch.full((2, 2), 4.0)], [torch.ones(3), torch.zeros(2, 2)]
    expected = [a.clone() for a in avg]
    for n in range(4):
        EMAWarmup(0.999)(avg, cur, torch.tensor(n))
        expected = [warm_ema(e, c, torch.tensor(n), decay=0.999) for e, c in zip(expected, cur)]
    for a, e in zip(avg, expected):
        torch.testing.assert_close(a, e)
    counters, now = [torch.tensor(3)], [torch.tensor(7)]
    EMAWarmup(0.999)(counters, now, torch.tensor(5))
    assert int(counters[0]) == 7  # integer buffers (BatchNorm's counter) are copied


class DtypeProbe(Family, Likelihood):
    """A linear 'model' that records the dtype its matmul runs in, in training and evaluation."""

    name = "dtype_probe"

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: dict[str, set] = {"train": set(), "eval": set(), "sample": set()}

    def build(self, info):
        return nn.ModuleDict({"f": nn.Linear(info.dims, 1)})

    def _out(self, nets, batch, stage):
        y = nets["f"](batch["x"].float().flatten(1))
        self.dtypes[stage].add(y.dtype)
        return y

    def loss(self, nets, batch, group=None):
        return LossOutput(self._out(nets, batch, "train").float().pow(2).mean(), {})

    def log_likelihood(self, nets, batch, stage="val"):
        return LogLikelihood(-self._out(nets, batch, "eval").squeeze(1).float().pow(2), "exact")

    def sample(self, nets, n):
        x = torch.zeros(n, nets["f"].in_features)
        self._out(nets, {"x": x}, "sample")
        return x


def test_bf16_mixed_trains_in_bf16_but_evaluates_and_samples_in_fp32(tmp_path):
    family = DtypeProbe()
    dm = ToyDataModule(batch_size=16, seed=0)
    module = GenerativeModule(family, dm.info, functools.partial(torch.optim.SGD, lr=0.01))
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                        accelerator="cpu", precision="bf16-mixed", default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm)
    module.sample(3)
    assert family.dtypes["train"] == {torch.bfloat16}  # autocast is really on in the steps
    assert family.dtypes["eval"] == {torch.float32} and family.dtypes["sample"] == {torch.float32}


def test_warmup_cosine_decays_over_the_time_budget_when_it_ends_first():
    from genlab.optim import warmup_cosine

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    spent = {"share": 0.0}
    sched = warmup_cosine(opt, total_steps=10**6, warmup_steps=0, min_ratio=0.1, time_progress=lambda: spent["share"])
    for share, expected in [(0.25, 0.1 + 0.9 * 0.5 * (1 + 2**-0.5)), (0.5, 0.55), (1.0, 0.1), (2.0, 0.1)]:
        spent["share"] = share
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    # no time budget and an unknown step budget: constant after warm-up
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = warmup_cosine(opt2, total_steps=float("inf"), warmup_steps=2)
    lrs = [opt2.param_groups[0]["lr"]] + [(sched2.step(), opt2.param_groups[0]["lr"])[1] for _ in range(4)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])


def test_a_max_time_run_anneals_the_learning_rate_by_the_end_of_its_budget(tmp_path):
    from genlab.optim import warmup_cosine

    dm = ToyDataModule(batch_size=16, seed=0)
    lr = 1e-6  # small enough that SGD on the probe's quadratic loss never diverges, however many steps
    module = GenerativeModule(DtypeProbe(), dm.info, functools.partial(torch.optim.SGD, lr=lr),
                              scheduler=functools.partial(warmup_cosine, warmup_steps=0, min_ratio=0.1))
    trainer = L.Trainer(max_epochs=10**6, max_time={"seconds": 2}, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step > 20 and module.time_progress() >= 1.0
    # the step budget (10^6 epochs) is far away; the time budget set the decay
    assert 0.1 * lr <= trainer.optimizers[0].param_groups[0]["lr"] < 0.15 * lr
