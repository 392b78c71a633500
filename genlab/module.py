"""One generic LightningModule that trains any family through the family contract."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from genlab import interrupt, progress
from genlab.compile import compile_nets
from genlab.data.base import DataInfo
from genlab.finite import FiniteWatch
from genlab.conditioning import marginal_log_likelihood
from genlab.families.base import Conditional, Family, Likelihood, LossOutput
from genlab.metrics.likelihood import LogLikelihood, nats_to_bpd


# examples of each batch that the sanity check evaluates before training (it proves the evaluation code
# runs; its figures are discarded): a full validation batch of a diffusion bound costs ~30 s on a CPU
SANITY_EXAMPLES = 8


class TrainingDivergedError(RuntimeError):
    """Training diverged (raised before the optimizer step, so no weights are harmed)."""


class NonFiniteLossError(TrainingDivergedError):
    """The training loss became NaN or infinite (raised before the optimizer step)."""


class GenerativeModule(L.LightningModule):
    """Trains ``family`` on data described by ``info``.

    Validation and test compute the family's per-example ``log P(x)`` and log the mean NLL
    as ``{val,test}/nll_nats`` and ``{val,test}/nll_bpd`` (reduced across DDP ranks by
    torchmetrics). Families with a :meth:`Family.schedule` (GANs) are trained with manual
    optimisation: one optimizer step per training step, for the param group the schedule
    names, so that every group's step sees its own batch. Randomness is re-seeded from
    ``(seed, global_step, rank)`` at every step, so that a run resumed from a checkpoint
    continues exactly as an uninterrupted one, and evaluation from ``(seed, batch_idx)`` so
    that val/test NLL are repeatable. Before any update, a non-finite loss or a divergence the
    family reports (:meth:`Family.diverged`) stops the run with :class:`TrainingDivergedError`.

    Args:
        family: the generative family (builds ``self.nets``).
        info: dataset metadata.
        optimizer: factory ``optimizer(params) -> Optimizer`` (``_partial_`` in config).
        scheduler: optional factory ``scheduler(optimizer, total_steps=...) -> LRScheduler``.
        seed: base seed for per-step randomness.
        run_config: the resolved run config, stored in checkpoints to rebuild the run.
    """

    def __init__(
        self,
        family: Family,
        info: DataInfo,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        seed: int = 0,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.family, self.info = family, info
        self.nets = family.build(info)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.seed, self.run_config = seed, run_config
        self.nll = torch.nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.conditional = isinstance(family, Conditional) and family.condition is not None
        self.nll_kind: dict[str, str] = {}
        self._sums: dict[str, dict[str, Tensor]] = {"val": {}, "test": {}}  # per-example statistics, summed
        self.history: list[dict[str, float]] = []  # per validation epoch: step, seconds, nll_bpd
        self._clock: float | None = None  # time.perf_counter() at fit start, minus time trained before a resume
        self._val_aborted = False  # a stop request arrived during this validation
        self.group_names = list(family.param_groups(self.nets))
        self.automatic_optimization = not family.schedule()
        self._finite = FiniteWatch()  # the finite-loss check (deferred on an accelerator)

    # -- training ----------------------------------------------------------------------
    def _reseed(self, offset: int) -> None:
        """Seed the generators that are in use: the CPU one, and CUDA's once CUDA is initialised.
        (``torch.manual_seed`` also queues lazy seeding of every other backend, with a Python stack
        trace each time: 0.3-1.6 ms per call against a few microseconds.)"""
        seed = (self.seed * 1_000_003 + offset) * 64 + self.global_rank
        torch.default_generator.manual_seed(seed)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(seed)

    def _logging_step(self) -> bool:
        """Whether Lightning writes the logs of this training step (every ``log_every_n_steps`` and at
        the end): the step's terms are collected only then, as collecting costs ~0.5 ms a call."""
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._reseed(self.global_step)
        if self.automatic_optimization:
            out = self.family.loss(self.nets, batch)
            self._check(out)
            if self._logging_step():
                self.log("train/loss", out.loss, prog_bar=True)
                self.log_dict({f"train/{k}": v for k, v in out.logs.items()})
            return out.loss
        return self._manual_step(batch)

    def _manual_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One optimizer step for the group that the family's schedule names now."""
        schedule = self.family.schedule()
        group = schedule[self.global_step % len(schedule)]
        i = self.group_names.index(group)
        opt = _as_list(self.optimizers())[i]
        self.toggle_optimizer(opt)  # other groups' parameters do not collect gradients
        out = self.family.loss(self.nets, batch, group=group)
        self._check(out)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out.loss)
        opt.step()
        self.untoggle_optimizer(opt)
        schedulers = _as_list(self.lr_schedulers())
        if schedulers:
            schedulers[i].step()
        # every step: each group's terms are logged on its own steps, which the logging steps may not hit
        self.log(f"train/{group}_loss", out.loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in out.logs.items()})
        return out.loss.detach()

    def _check(self, out: LossOutput) -> None:
        """Raise before the update if the loss is not finite or the family reports divergence. On an
        accelerator, without waiting for the device (:mod:`genlab.finite`): a non-finite loss is found a
        step or two later, and the family's divergence check runs on logging steps only."""
        bad, deferred = self._finite.check(self.global_step, out.loss), self._finite.is_deferred(out.loss)
        if bad is not None:
            self._stop(out, f"The training loss is {bad.loss.item()}", nonfinite=True,
                       late=bad.step if deferred else None)
        if not deferred or self._logging_step():
            reason = self.family.diverged(out)
            if reason is not None:
                self._stop(out, reason, nonfinite=False, late=None)

    def _stop(self, out: LossOutput, reason: str, nonfinite: bool, late: int | None) -> None:
        """Raise the one-paragraph error of a diverged run (``late``: the earlier step it came from)."""
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.logs.items()) or "none"
        ckpt = checkpoint_paths(self.trainer)["last"]
        saved = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was saved before it"
        resume = "resume with ckpt_path=<that checkpoint>" if ckpt else "train again"
        fix = ("Fix: lower optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0, automatic-optimisation "
               "families), or check the data for invalid values; then " if nonfinite else "After the fix above, ")
        when = (f"at step {late} (found at step {self.global_step}: on an accelerator the check does not wait for "
                f"the device, so the weights were updated with it; the checkpoints on disk are from before it)"
                if late is not None else f"at step {self.global_step}")
        state = f"The weights were not updated with it; {saved}" if late is None else saved[0].upper() + saved[1:]
        raise (NonFiniteLossError if nonfinite else TrainingDivergedError)(
            f"{reason} {when} (family={self.family.name}, terms: {terms}). {state}. {fix}{resume}."
        )

    def configure_optimizers(self) -> Any:
        groups = self.family.param_groups(self.nets)
        optimizers = [self.optimizer_factory(params) for params in groups.values()]
        if self.scheduler_factory is None:
            return optimizers
        total = self.trainer.estimated_stepping_batches
        if not self.automatic_optimization:  # each group steps once per cycle of the schedule
            schedule = self.family.schedule()
            total = [max(1, int(total * schedule.count(g) / len(schedule))) for g in groups]
        else:
            total = [total] * len(optimizers)
        extra = {}
        if self._time_budget() is not None and _accepts(self.scheduler_factory, "time_progress"):
            extra["time_progress"] = self.time_progress  # a max_time run: decay over the time budget
        schedulers = [
            {"scheduler": self.scheduler_factory(opt, total_steps=t, **extra), "interval": "step"}
            for opt, t in zip(optimizers, total)
        ]
        return optimizers, schedulers

    def _time_budget(self) -> Timer | None:
        trainer = self._trainer
        timers = [c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, Timer)]
        return timers[0] if timers and timers[0].time_remaining() is not None else None

    def time_progress(self) -> float:
        """The share (0..1) of the trainer's time budget (``max_time``) spent; 0 without one."""
        timer = self._time_budget()
        if timer is None:
            return 0.0
        spent, left = timer.time_elapsed("train"), timer.time_remaining("train")
        return min(1.0, spent / max(spent + left, 1e-9))

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate ``-log P(x)`` of a batch. On a stop request (SIGTERM/SIGINT) a test stops at once
        (:class:`~genlab.interrupt.RunInterrupted`); a validation inside fit skips its remaining
        batches and records nothing, so that training reaches its next step and checkpoints there."""
        if stage == "val" and (self._val_aborted or interrupt.requested() is not None):
            self._val_aborted = True
            return
        if not isinstance(self.family, Likelihood):
            return
        if self._trainer is not None and self.trainer.sanity_checking:
            batch = {k: v[:SANITY_EXAMPLES] for k, v in batch.items()}  # the code path, not the figure
        try:
            ll = self.likelihood(batch, stage, seed=10**9 + batch_idx)
        except interrupt.RunInterrupted:
            if stage != "val":
                raise
            self._val_aborted = True
            return
        if ll is None:
            return
        self.nll[stage].update(-ll.log_px.double())
        self.nll_kind[stage] = ll.kind
        self._accumulate(stage, ll)

    def likelihood(self, batch: dict[str, Tensor], stage: str, seed: int) -> LogLikelihood | None:
        """The family's ``log P(x)`` of ``batch`` in full precision (whatever ``trainer.precision`` trains
        in: a bound or an exact NLL must not depend on the training speed-up), with the randomness seeded
        by ``seed``. A conditional model's is the marginal over classes with the conditional
        ``log p(x | y)`` of the batch's labels in ``extras["cond_log_px"]`` (:meth:`class_log_likelihoods`)."""
        with torch.autocast(self.device.type, enabled=False):
            if not self.conditional:
                self._reseed(seed)
                return self.family.log_likelihood(self.nets, batch, stage=stage)
            per_class, ll = self.class_log_likelihoods(batch, stage, seed)
        if ll is None:
            return None
        log_prior = self.family.condition.log_prior(per_class.device)
        marginal = marginal_log_likelihood(per_class, log_prior)
        # the generative classifier comes free with the marginal: argmax_y log p(x | y) + log p(y)
        correct = ((per_class + log_prior).argmax(1) == batch["y"].to(per_class.device)).double()
        return LogLikelihood(marginal, ll.kind, {**ll.extras, "cond_log_px": ll.log_px.double(), "cond_correct": correct})

    def class_log_likelihoods(self, batch: dict[str, Tensor], stage: str = "test",
                              seed: int = 0) -> tuple[Tensor, LogLikelihood | None]:
        """``log p(x | y = k)`` for every class ``k``: ``(B, K)`` float64, and the family's result for
        the batch's own labels (its extras). Every class is evaluated with the same random numbers
        (common random numbers: a Monte Carlo bound's differences between classes have less noise)."""
        labels = self.family.condition.check(batch.get("y"), len(batch["x"]))
        results = []
        for k in range(self.family.condition.num_classes):
            self._reseed(seed)
            results.append(self.family.log_likelihood(self.nets, {**batch, "y": torch.full_like(labels, k)},
                                                      stage=stage))
        if results[0] is None:
            return torch.empty(len(labels), 0), None
        per_class = torch.stack([r.log_px.double() for r in results], dim=1)
        own = labels[:, None].to(per_class.device)
        extras = {key: torch.stack([r.extras[key] for r in results], 1).gather(1, own)[:, 0]
                  for key in results[0].extras}
        return per_class, LogLikelihood(per_class.gather(1, own)[:, 0], results[0].kind, extras)

    def _accumulate(self, stage: str, ll: Any) -> None:
        """Sum ``nll``, ``nll_sq`` and every per-example extra of the result in float64 (a conditional
        model's ``cond_log_px`` as ``cond_nll`` and ``cond_nll_sq``)."""
        nll = -ll.log_px.detach().double()
        extras = {k: v.detach().double() for k, v in ll.extras.items()}
        if "cond_log_px" in extras:
            cond = -extras.pop("cond_log_px")
            extras.update(cond_nll=cond, cond_nll_sq=cond * cond, cond_correct=extras.pop("cond_correct"))
        terms = {"nll": nll, "nll_sq": nll * nll, **extras}
        sums = self._sums[stage]
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.sum()
        sums["n"] = sums.get("n", 0.0) + torch.tensor(float(nll.numel()), dtype=torch.float64, device=nll.device)

    def _log_statistics(self, stage: str) -> None:
        """The family's summary of the epoch's sums (reduced over DDP ranks), as ``{stage}/<key>``."""
        sums, self._sums[stage] = self._sums[stage], {}
        if not sums:  # only a Likelihood family's results are accumulated
            return
        keys = sorted(sums)
        total = self.trainer.strategy.reduce(torch.stack([sums[k] for k in keys]), reduce_op="sum")
        reduced = {k: float(v) for k, v in zip(keys, total)}
        n = int(reduced.pop("n"))
        # the number of examples the NLL averages (the protocol of the figure and its standard error)
        stats = {"nll_examples": float(n),
                 **example_standard_error(n, reduced["nll"], reduced["nll_sq"], self.info.dims)}
        if "cond_nll" in reduced:  # a conditional model: log p(x | y) beside the marginal
            cond, cond_sq = reduced.pop("cond_nll"), reduced.pop("cond_nll_sq")
            stats.update(cond_nll_nats=cond / n, cond_nll_bpd=cond / n / (self.info.dims * math.log(2)),
                         classifier_accuracy=reduced.pop("cond_correct") / n)
            stats.update({f"cond_{k}": v for k, v in example_standard_error(n, cond, cond_sq, self.info.dims).items()})
        stats.update(self.family.summarize_likelihood(self.nets, n, reduced))
        for key, value in stats.items():
            self.log(f"{stage}/{key}", float(value), sync_dist=False)

    def _eval_epoch_end(self, stage: str) -> None:
        if stage == "val" and self._val_aborted:  # nothing is recorded that was not computed in full
            self._val_aborted = False
            self.nll[stage].reset()
            self._sums[stage] = {}
            return
        if stage == "val" and not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, "step": self.global_step, "seconds": self.elapsed()})
        if stage not in self.nll_kind:
            return
        nats = self.nll[stage].compute()
        self.nll[stage].reset()
        bpd = nats_to_bpd(nats, self.info.dims).float()
        self.log(f"{stage}/nll_nats", nats.float(), sync_dist=False)
        self.log(f"{stage}/nll_bpd", bpd, prog_bar=True, sync_dist=False)
        self._log_statistics(stage)
        if stage == "val" and not self.trainer.sanity_checking:
            self.history[-1]["nll_bpd"] = bpd.item()

    def setup(self, stage: str) -> None:
        # the bars inside long evaluations (genlab.progress) follow the run's own progress bar
        progress.set_enabled(self.trainer.progress_bar_callback is not None)
        # the run config's `compile`: the nets compiled in place (genlab.compile; a no-op once compiled); not in
        # configure_model, which makes Lightning's EMA callback warn about sharding
        compile_nets(self.family, self.nets, (self.run_config or {}).get("compile"), self.device)

    def on_fit_start(self) -> None:
        done = self.history[-1]["seconds"] if self.history else 0.0
        self._clock = time.perf_counter() - done

    def elapsed(self) -> float:
        """Seconds of training so far (across resumes; evaluation included)."""
        return 0.0 if self._clock is None else time.perf_counter() - self._clock

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- sampling / checkpoints ---------------------------------------------------------
    @contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode, no gradients, fp32 whatever ``trainer.precision`` trains in; the
        training mode is restored after."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                yield
        finally:
            self.train(was_training)

    def sample(self, n: int, seed: int | None = None, y: Tensor | None = None) -> Tensor:
        """``n`` samples in data space, in eval mode, optionally with a fixed seed. A conditional model
        takes labels ``y`` ``(n,)`` (None: drawn from ``p(y)``, samples of the marginal); an unconditional
        one refuses them."""
        with self.inference():
            if seed is not None:
                torch.manual_seed(seed)
            if self.conditional:
                return self.family.sample(self.nets, n, y=y)
            if y is not None:
                raise ValueError(f"labels were given, but this {self.family.name} model is unconditional. Fix: drop "
                                 "them, or train with +conditional=class")
            return self.family.sample(self.nets, n)

    def grid_labels(self, n: int) -> Tensor | None:
        """Labels of a sample grid of about ``n`` images with one row per class (None: unconditional)."""
        return self.family.condition.grid_labels(n) if self.conditional else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["genlab_config"] = self.run_config
        checkpoint["genlab_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the history; let the family adapt the saved weights to its configuration
        (:meth:`Family.adapt_state`) before they are loaded (also the raw ones of an EMA run)."""
        self.history = list(checkpoint.get("genlab_history", []))
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                state = checkpoint[key]
                nets = {k.removeprefix("nets."): v for k, v in state.items() if k.startswith("nets.")}
                rest = {k: v for k, v in state.items() if not k.startswith("nets.")}
                adapted = self.family.adapt_state(self.nets, nets)
                checkpoint[key] = {**rest, **{f"nets.{k}": v for k, v in adapted.items()}}


def example_standard_error(n: int, nll: float, nll_sq: float, dims: int) -> dict[str, float]:
    """``{"nll_bpd_se": sd / sqrt(n)}`` of the mean NLL over ``n`` examples from the sums of ``nll`` and
    ``nll^2`` (nats), in bits/dim; empty for fewer than two examples (an unknown error is not a zero one)."""
    if n < 2:
        return {}
    mean = nll / n
    var = max(nll_sq / n - mean * mean, 0.0) * n / (n - 1)
    return {"nll_bpd_se": math.sqrt(var / n) / (dims * math.log(2))}


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` (a function or a ``functools.partial`` of one) takes keyword ``name``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def checkpoint_paths(trainer: L.Trainer) -> dict[str, str | None]:
    """``{"best": ..., "last": ...}`` checkpoint paths of a run (None where not saved).

    ``last`` is the unmonitored checkpoint callback named ``last`` (configs/callbacks/default.yaml),
    else Lightning's ``save_last`` file; ``best`` the first other checkpoint callback's best.
    """
    best = last = None
    for cb in trainer.checkpoint_callbacks:
        if cb.filename == "last":
            last = last or cb.best_model_path or None
        else:
            best = best or cb.best_model_path or None
            last = last or getattr(cb, "last_model_path", None) or None
    return {"best": best, "last": last}
