"""Gaussian diffusion: DDPM (Ho et al. 2020) and improved DDPM (Nichol & Dhariwal 2021).

Data mapping: discrete ``x in {0..L-1}^D`` is scaled to bin centres ``x0 = 2 x / (L - 1) - 1`` in
``[-1, 1]``; samples are mapped back by rounding. The network ``net(x_t, t / T)`` (a shared
time-conditioned backbone, :mod:`genlab.nets.unet`) is read through a :mod:`prediction
<genlab.families.diffusion.predictions>` (``eps``, ``x0``, ``v``) and defines the reverse process
``p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), Sigma_t)`` (Ho et al. Eq. 1, 6-7) with ``Sigma_t``
fixed (``beta~_t``: ``small``; ``beta_t``: ``large``) or learned (``loss=hybrid``).

Likelihood: the variational bound on the DISCRETE data (Ho et al. Eq. 5; Sohl-Dickstein et al. 2015)::

    -log P(x) <= L_T + sum_{t=1}^{T-1} L_{t-1} + L_0
    L_T     = KL(q(x_{T-1} | x0) || N(0, I))                         (no parameters, exact)
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))      (one draw of x_t per term)
    L_0     = E_q -log P(x | x_0),  P = discretised Gaussian (Eq. 13), bins of width 2/(L-1)

in nats per example (``nll_kind = "bound"``). The ``T - 1`` KL terms are summed exactly
(``{val,test}_timesteps: null``) or estimated without bias from ``K`` stratified timesteps (one
uniform draw from each of ``K`` near-equal strata of ``1..T-1``, weighted by the stratum size).
The Monte Carlo variance of that estimate and the spread across examples are accumulated per
stage (:meth:`Diffusion.bound_stats`) and logged by
:class:`~genlab.families.diffusion.callbacks.BoundStandardError` as ``{stage}/nll_bpd_se``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genlab import interrupt
from genlab.data.base import DataInfo, check_discrete
from genlab.families.base import Family, LossOutput
from genlab.families.diffusion.guidance import Guidance, GuideNet, guided
from genlab.families.diffusion.objectives import DiffusionObjective, SimpleLoss
from genlab.families.diffusion.predictions import PREDICTIONS, Prediction
from genlab.families.diffusion.process import (
    GaussianDiffusion, discretized_gaussian_log_prob, normal_kl, stratified_timesteps,
)
from genlab.families.diffusion.samplers import SAMPLERS, DDIM, Sampler
from genlab.families.diffusion.schedules import SCHEDULES, NoiseSchedule
from genlab.metrics.likelihood import LogLikelihood
from genlab.nets import input_kind_error

# fixed reverse variances: name (stable API) -> table of GaussianDiffusion (log variance per step)
FIXED_VARIANCES: dict[str, str] = {"small": "post_logvar", "large": "log_betas_clipped"}


def resolve(value: Any, registry: dict[str, type], base: type, key: str) -> Any:
    """A config value that is either an instance of ``base`` or the stable name of one."""
    if isinstance(value, base):
        return value
    if isinstance(value, str) and value in registry:
        return registry[value]()
    raise ValueError(
        f"model.{key}={value!r} is not a valid {key}: valid names are {', '.join(registry)} "
        f"(e.g. model.{key}={next(iter(registry))}), or a config node with the _target_ of a {base.__name__}"
    )


@dataclass
class ReverseStep:
    """``p(x_{t-1} | x_t) = N(mean, exp(logvar))`` and the predictions it is made of (all ``(B, *shape)``)."""

    x0: Tensor
    eps: Tensor
    mean: Tensor
    logvar: Tensor


@dataclass
class BoundEstimate:
    """Terms of the variational bound per example in nats, ``(B,)`` each (module docstring)."""

    prior: Tensor  # L_T
    decoder: Tensor  # L_0
    kl: Tensor  # sum_{t=1}^{T-1} L_{t-1}, exact or estimated
    kl_var: Tensor  # Monte Carlo variance of ``kl`` from the timestep subsample (0 when exact)

    @property
    def nll(self) -> Tensor:
        return self.prior + self.decoder + self.kl


@dataclass
class BoundStats:
    """Running sums over the examples of one evaluation epoch (float64, nats)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    mc_var: float = 0.0

    def update(self, est: BoundEstimate) -> None:
        nll = est.nll.detach().double()
        self.n += nll.numel()
        self.total += float(nll.sum())
        self.total_sq += float((nll * nll).sum())
        self.mc_var += float(est.kl_var.detach().double().sum())

    def standard_errors(self) -> dict[str, float]:
        """Standard errors (nats) of the mean NLL: ``examples`` (spread over the evaluated examples,
        ``sd / sqrt(n)``) and ``timesteps`` (Monte Carlo error of the timestep subsample alone)."""
        if self.n == 0:
            return {}
        mean = self.total / self.n
        var = max(self.total_sq / self.n - mean * mean, 0.0) * self.n / max(self.n - 1, 1)
        return {"examples": math.sqrt(var / self.n), "timesteps": math.sqrt(self.mc_var) / self.n}


class Diffusion(Family):
    """Gaussian diffusion family (module docstring). Images (UNet) and points / small images (TimeMLP).

    Args:
        net: backbone factory ``net(shape=..., out_mult=...)`` with ``forward(x, t)``, ``t in [0, 1]``
            (``_partial_`` in config), e.g. :class:`genlab.nets.unet.UNet`.
        schedule: noise schedule, an object or its stable name (``linear``, ``cosine``).
        prediction: what the net predicts, an object or its name (``eps``, ``x0``, ``v``).
        sampler: default sampler, an object or its name (``ddpm``, ``ddim``); default DDIM, 50 steps.
        timesteps: ``T``, length of the diffusion chain (at least 2).
        fixed_variance: reverse variance when it is not learned: ``small`` (``beta~_t``) or ``large`` (``beta_t``).
        clip_denoised: clip ``x0_hat`` to ``[-1, 1]`` while sampling (not in the bound).
        val_timesteps, test_timesteps: KL terms evaluated for the val / test bound (stratified
            subsample of ``1..T-1``); None (or ``>= T-1``): all of them.
        eval_chunk: most (example, timestep) pairs in one network call of the bound (memory vs speed).
        objective: the training loss (``loss`` group); ``simple`` by default.
        guidance: autoguidance (:mod:`~genlab.families.diffusion.guidance`): ``{weight, at}``
            keeps a frozen copy of the EMA weights from the share ``at`` of training as the guide
            and samples with ``guide + weight * (model - guide)``; None: no guide.
    """

    name = "diffusion"
    compare_rank = 40
    objective_type = DiffusionObjective
    nll_kind = "bound"

    def __init__(
        self,
        net: Callable[..., nn.Module],
        schedule: NoiseSchedule | str = "linear",
        prediction: Prediction | str = "eps",
        sampler: Sampler | str | None = None,
        timesteps: int = 1000,
        fixed_variance: str = "small",
        clip_denoised: bool = True,
        val_timesteps: int | None = 32,
        test_timesteps: int | None = None,
        eval_chunk: int = 4096,
        objective: DiffusionObjective | None = None,
        guidance: Guidance | dict[str, float] | None = None,
    ) -> None:
        super().__init__(objective or SimpleLoss())
        if timesteps < 2:
            raise ValueError(f"model.timesteps={timesteps}: a diffusion chain needs at least 2 steps")
        if fixed_variance not in FIXED_VARIANCES:
            raise ValueError(f"model.fixed_variance={fixed_variance!r} is not valid: choose one of "
                             f"{', '.join(FIXED_VARIANCES)}")
        for key, k in (("val_timesteps", val_timesteps), ("test_timesteps", test_timesteps)):
            if k is not None and k < 1:
                raise ValueError(f"model.{key}={k}: use a number of timesteps >= 1, or null for all of them")
        self.net_factory = net
        # not ``self.schedule``: Family.schedule() is the optimizer cycle
        self.noise_schedule = resolve(schedule, SCHEDULES, NoiseSchedule, "schedule")
        self.prediction = resolve(prediction, PREDICTIONS, Prediction, "prediction")
        self.sampler = DDIM(steps=50) if sampler is None else resolve(sampler, SAMPLERS, Sampler, "sampler")
        self.process = GaussianDiffusion(self.noise_schedule.betas(timesteps))
        self.fixed_variance, self.clip_denoised = fixed_variance, clip_denoised
        self.val_timesteps, self.test_timesteps, self.eval_chunk = val_timesteps, test_timesteps, eval_chunk
        self.guidance = Guidance.parse(guidance)
        self._warned_unguided = False
        self.info: DataInfo | None = None
        self._stats: dict[str, BoundStats] = {}

    # -- setup -----------------------------------------------------------------------------
    def check_data(self, info: DataInfo) -> str | None:
        if info.kind == "text":
            return ("Gaussian diffusion adds Gaussian noise to values on an ordered scale [-1, 1]; text is "
                    "categorical token ids with no order or distance, so noising and the discretised-Gaussian "
                    "decoder are meaningless for it (use an autoregressive model, e.g. model=transformer)")
        if reason := input_kind_error(self.net_factory, info.kind):
            return f"{reason}: use model=ddpm_mlp (a TimeMLP backbone) for {info.kind} data"
        return None

    @property
    def learns_variance(self) -> bool:
        return bool(getattr(self.objective, "learns_variance", False))

    def build(self, info: DataInfo) -> nn.ModuleDict:
        self.info = info
        out_mult = 2 if self.learns_variance else 1  # a second block for the variances (Eq. 15)
        nets = nn.ModuleDict({"net": self.net_factory(shape=tuple(info.shape), out_mult=out_mult)})
        if self.guidance is not None:  # filled in during training by callbacks.GuideSnapshot
            nets["guide"] = GuideNet(nets["net"])
        return nets

    def adapt_state(self, nets: nn.ModuleDict, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The guide snapshot: required with ``model.guidance`` (it cannot be made after training),
        ignored with ``model.guidance=null``."""
        saved = any(k.startswith("guide.") for k in state)
        if "guide" in nets and not saved:
            raise ValueError("this checkpoint was trained without model.guidance, so it holds no guide snapshot for "
                             "autoguidance (the guide is frozen during training). Fix: drop the model.guidance "
                             "override, or retrain with e.g. model.guidance='{weight: 3.0, at: 0.25}'.")
        if "guide" not in nets and saved:
            return {k: v for k, v in state.items() if not k.startswith("guide.")}
        return state

    # -- data space <-> [-1, 1] ----------------------------------------------------------------
    def check_discrete(self, x: Tensor) -> Tensor:
        """Validate a batch of discrete data (shape, integer values in ``0..L-1``); returns ``x``."""
        return check_discrete(x, self.info,
                              "pass the dataset's uint8/int64 tensors, not values already scaled to [-1, 1]")

    @property
    def bin_width(self) -> float:
        """Width ``2 / (L - 1)`` of one discrete level in the scaled space."""
        return 2.0 / (self.info.levels - 1)

    def scale(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Discrete ``x`` -> bin centres ``2 x / (L - 1) - 1`` in ``[-1, 1]``."""
        return x.to(dtype) * self.bin_width - 1.0

    def to_data(self, y: Tensor) -> Tensor:
        """``y`` in ``[-1, 1]`` -> nearest level, uint8 (int64 where ``L > 256``)."""
        levels = self.info.levels
        y = torch.nan_to_num(y.float(), nan=0.0, posinf=1.0, neginf=-1.0)
        x = ((y + 1) / self.bin_width).round().clamp(0, levels - 1)
        return x.to(torch.uint8 if levels <= 256 else torch.long)

    # -- the reverse process ---------------------------------------------------------------------
    def net_output(self, nets: nn.ModuleDict, process: GaussianDiffusion, x_t: Tensor, t: Tensor,
                   guide: bool = False) -> Tensor:
        """Raw network output at ``(x_t, t)``: ``(B, C, ...)``, or ``(B, 2C, ...)`` with learned variances.
        ``guide``: the autoguided prediction (samplers only; :meth:`guided_sampling`)."""
        out = _fp32(nets["net"](x_t, process.net_time(t)))
        if guide and self.guided_sampling(nets):
            out = guided(out, _fp32(nets["guide"](x_t, process.net_time(t))), self.guidance.weight, self.info.shape[0])
        return out

    def guided_sampling(self, nets: nn.ModuleDict) -> bool:
        """Whether samples are autoguided: a guidance weight other than 1 and a guide snapshot taken
        (warns once, and samples unguided, while the run has not reached ``model.guidance.at``)."""
        if self.guidance is None or self.guidance.weight == 1.0:
            return False
        if "guide" in nets and nets["guide"].ready:
            return True
        if not self._warned_unguided:
            self._warned_unguided = True
            warnings.warn(f"sampling without guidance: the guide snapshot is taken after {self.guidance.at:g} of "
                          "training and this model has not reached it yet", stacklevel=3)
        return False

    def split_output(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Network output -> (prediction, variance interpolation ``v`` or None)."""
        if not self.learns_variance:
            return out, None
        c = self.info.shape[0]
        return out[:, :c], out[:, c:]

    def log_variance(self, process: GaussianDiffusion, t: Tensor, x_t: Tensor, v: Tensor | None) -> Tensor:
        """``log Sigma_t``: fixed, or ``u log beta_t + (1 - u) log beta~_t``, ``u = (v + 1) / 2``
        (Nichol & Dhariwal 2021, Eq. 15; ``beta~_0`` is clipped to ``beta~_1``)."""
        if v is None:
            return process.at(FIXED_VARIANCES[self.fixed_variance], t, x_t).expand_as(x_t)
        u = (v + 1) / 2
        return u * process.at("log_betas", t, x_t) + (1 - u) * process.at("post_logvar", t, x_t)

    def reverse_from_output(self, process: GaussianDiffusion, x_t: Tensor, t: Tensor, out: Tensor,
                            clip: bool = False) -> ReverseStep:
        """``p(x_{t-1} | x_t)`` from a network output: ``mean = mu~_t(x_t, x0_hat)`` (Ho et al. Eq. 7)."""
        pred, v = self.split_output(out)
        x0, eps = self.prediction.to_x0_eps(process, t, x_t, pred)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = process.eps_from_x0(x_t, t, x0)
        mean, _ = process.q_posterior(x0, x_t, t)
        return ReverseStep(x0, eps, mean, self.log_variance(process, t, x_t, v))

    def reverse(self, nets: nn.ModuleDict, process: GaussianDiffusion, x_t: Tensor, t: Tensor,
                clip: bool = False, guide: bool = False) -> ReverseStep:
        """``p(x_{t-1} | x_t)`` on ``process`` (the training chain or a respaced one); ``guide``: with
        the autoguided prediction (the samplers; never the bound)."""
        return self.reverse_from_output(process, x_t, t, self.net_output(nets, process, x_t, t, guide), clip)

    # -- variational bound ------------------------------------------------------------------------
    def vb_term(self, process: GaussianDiffusion, x0: Tensor, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """``L_{t-1}`` (KL to the posterior) for ``t >= 1`` and ``L_0`` (decoder NLL) for ``t = 0``,
        per example in nats, ``(B,)``, from the network output ``out`` at ``x_t``."""
        rev = self.reverse_from_output(process, x_t, t, out)
        true_mean, _ = process.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, process.at("post_logvar", t, x0), rev.mean, rev.logvar).flatten(1).sum(1)
        nll = -discretized_gaussian_log_prob(x0, rev.mean, 0.5 * rev.logvar, self.bin_width).flatten(1).sum(1)
        return torch.where(t == 0, nll, kl)

    def terms_at(self, nets: nn.ModuleDict, x0: Tensor, t: Tensor) -> Tensor:
        """One-draw estimates of ``L_{t-1}`` (``L_0`` at ``t = 0``) per example, ``x_t ~ q(x_t | x0)``."""
        x_t = self.process.q_sample(x0, t, torch.randn_like(x0))
        return self.vb_term(self.process, x0, x_t, t, self.net_output(nets, self.process, x_t, t))

    def _terms(self, nets: nn.ModuleDict, x0: Tensor, ts: Tensor) -> Tensor:
        """``terms_at`` for timesteps ``ts`` ``(K, B)``, several timesteps per network call; ``(K, B)``."""
        k_per_call = max(1, self.eval_chunk // x0.shape[0])
        rows = []
        for chunk in ts.split(k_per_call):
            interrupt.check("during the diffusion bound")  # a stop request between chunks of timesteps
            xs = x0.repeat(chunk.shape[0], *([1] * (x0.ndim - 1)))
            rows.append(self.terms_at(nets, xs, chunk.flatten()).view(chunk.shape[0], -1))
        return torch.cat(rows)

    def bound(self, nets: nn.ModuleDict, x0: Tensor, timesteps: int | None = None) -> BoundEstimate:
        """The variational bound on ``-log P(x)`` for ``x0`` in ``[-1, 1]`` (module docstring).

        Args:
            timesteps: ``K`` stratified KL terms; None or ``>= T - 1``: all ``T - 1`` terms.
        """
        b, big_t = x0.shape[0], self.process.T
        k = big_t - 1 if timesteps is None else min(timesteps, big_t - 1)
        if k == big_t - 1:
            ts = torch.arange(1, big_t, device=x0.device)[:, None].expand(k, b)
            sizes = torch.ones(k, dtype=torch.float64)
        else:
            ts, sizes = stratified_timesteps(b, k, 1, big_t, device=x0.device)
        weighted = sizes.to(x0.device, x0.dtype)[:, None] * self._terms(nets, x0, ts)  # (K, B)
        if k == big_t - 1:
            kl_var = torch.zeros(b, device=x0.device)  # every term evaluated: no timestep sampling error
        elif k == 1:
            kl_var = torch.full((b,), math.nan, device=x0.device)  # one draw: its variance is unknown
        else:  # the K weighted draws K n_k L_k treated as i.i.d. (conservative for stratified draws)
            kl_var = (k * weighted).var(0) / k
        decoder = self.terms_at(nets, x0, torch.zeros(b, dtype=torch.long, device=x0.device))
        return BoundEstimate(self.process.prior_kl(x0), decoder, weighted.sum(0), kl_var)

    # -- contract ---------------------------------------------------------------------------------
    def loss(self, nets: nn.ModuleDict, batch: dict[str, Tensor]) -> LossOutput:
        return self.objective(self, nets, self.scale(self.check_discrete(batch["x"])))

    @torch.no_grad()
    def log_likelihood(self, nets: nn.ModuleDict, batch: dict[str, Tensor], stage: str = "test") -> LogLikelihood:
        """The bound as ``log P(x) >= -(L_T + sum L_{t-1} + L_0)`` per example; accumulates the
        standard-error statistics of ``stage`` (:meth:`bound_stats`)."""
        dtype = next(nets.parameters()).dtype
        x0 = self.scale(self.check_discrete(batch["x"]), dtype)
        est = self.bound(nets, x0, self.val_timesteps if stage == "val" else self.test_timesteps)
        self._stats.setdefault(stage, BoundStats()).update(est)
        return LogLikelihood(-est.nll.double(), "bound")

    def bound_stats(self, stage: str, reset: bool = False) -> BoundStats:
        """Statistics of the bounds computed for ``stage`` since the last reset."""
        stats = self._stats.get(stage, BoundStats())
        if reset:
            self._stats[stage] = BoundStats()
        return stats

    @torch.no_grad()
    def sample(self, nets: nn.ModuleDict, n: int, sampler: Sampler | str | None = None,
               x_T: Tensor | None = None) -> Tensor:
        """``n`` samples in data space with ``sampler`` (default ``model.sampler``), optionally from
        given initial noise ``x_T`` ``(n, *shape)``; autoguided when ``model.guidance`` says so."""
        s = self.sampler if sampler is None else resolve(sampler, SAMPLERS, Sampler, "sampler")
        return self.to_data(s(self, nets, n, x_T))


def _fp32(out: Tensor) -> Tensor:
    """fp32 maths after a bf16-autocast net; float64 (the closed-form tests) stays float64."""
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
