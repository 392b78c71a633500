"""Every config composes and instantiates; every model x dataset pair trains or is refused early."""

import json
import math

import pytest
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate

from genlab.builders import build_family, build_scheduler, check_compatible, group_options
from genlab.families.base import Family, IncompatibleConfigError
from genlab.train import run

GROUPS = ["dataset", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger", "experiment", "paths"]
NO_NETWORK = {"tiny_shakespeare"}  # needs a download; its loader is tested with local files


def data_overrides(name: str, fake) -> list[str]:
    """Point a dataset config at the fake files and keep the smoke runs small."""
    return {
        "mnist": [f"paths.data_dir={fake['root']}", "dataset.download=false"],
        "binarized_mnist": [f"paths.data_dir={fake['root']}", "dataset.download=false"],
        "cifar10": [f"paths.data_dir={fake['root']}", "dataset.download=false"],
        "text": ["dataset.block_size=32"],
        "text_file": [f"dataset.source.path={fake['text']}", "dataset.block_size=32"],
        "array": [f"dataset.path={fake['array']}"],
        "image_folder": [f"dataset.path={fake['image_folder']}", f"paths.data_dir={fake['root']}"],
    }.get(name, [])


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_instantiates(group, make_cfg, fake_data):
    for option in group_options(group):
        extra = data_overrides(option, fake_data) if group == "dataset" else []
        cfg = make_cfg(f"{group}={option}", *extra)
        node = cfg.get(group)
        if group in ("paths", "experiment") or not node:
            assert cfg.dataset and cfg.model and cfg.trainer
            continue
        if group == "trainer" and node.get("accelerator") == "gpu" and not torch.cuda.is_available():
            assert node.precision == "bf16-mixed"
            continue
        if group in ("callbacks", "logger"):
            assert all(instantiate(v) is not None for v in node.values())
        elif group == "optimizer":
            assert isinstance(instantiate(node)([torch.nn.Parameter(torch.zeros(2))]), torch.optim.Optimizer)
        elif group == "scheduler":
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
            assert instantiate(node)(opt, total_steps=100) is not None
        elif group == "model":
            assert isinstance(build_family(cfg), Family)
        elif group == "dataset" and option not in NO_NETWORK:
            dm = instantiate(node)
            assert dm.info.dims > 0 and dm.info.levels >= 2
        else:
            assert instantiate(node) is not None


@pytest.mark.parametrize("experiment", ["ddpm_mnist"])
def test_scheduler_none_overrides_an_experiments_schedule_settings(experiment, make_cfg):
    """The experiments set their cosine schedule's warm-up; ``scheduler=none`` must still mean a
    constant learning rate (it used to leave a config without ``_target_`` that crashed the run)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    cfg = make_cfg(f"experiment={experiment}")
    assert "warmup_steps" in cfg.scheduler
    total = cfg.scheduler.warmup_steps + 100
    sched = build_scheduler(cfg)(opt, total_steps=total)
    for _ in range(total - 1):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.scheduler.min_ratio, rel=0.05)  # decayed
    assert build_scheduler(make_cfg(f"experiment={experiment}", "scheduler=none")) is None
    # experiment=gan_mnist trains at constant learning rates; scheduler=cosine still decays them
    assert build_scheduler(make_cfg("experiment=gan_mnist")) is None
    assert build_scheduler(make_cfg("experiment=gan_mnist", "scheduler=cosine")) is not None


def model_overrides(name: str) -> list[str]:
    """Keep each model's smoke run small (e.g. few importance samples)."""
    return {
        "vae": ["model.test_k=4"],
        "vae_conv": ["model.test_k=4"],
        "pixelcnn": ["model.net.channels=8", "model.net.layers=2", "model.net.out_hidden=8"],
        "realnvp": ["model.checkerboard_steps=1", "model.steps_per_scale=1", "model.coupling_net.hidden=8",
                    "model.coupling_net.blocks=1"],
        "glow": ["model.steps_per_scale=2", "model.coupling_net.hidden=8", "model.coupling_net.blocks=1"],
        "ddpm": ["model.timesteps=20", "model.net.channels=8", "model.net.channel_mults=[1,2]",
                 "model.net.num_res_blocks=1", "model.net.heads=1", "model.val_timesteps=2",
                 "model.test_timesteps=2", "model.sampler.steps=2"],
        "ddpm_mlp": ["model.timesteps=20", "model.net.hidden=16", "model.net.layers=1", "model.val_timesteps=2",
                     "model.test_timesteps=2", "model.sampler.steps=2"],
        "dcgan": ["model.generator.channels=4", "model.discriminator.channels=4"],
        "gan_mlp": ["model.generator.hidden=[8]", "model.discriminator.hidden=[8]", "callbacks.sample_metrics.n=16"],
        "ebm": ["model.energy_net.channels=8", "model.buffer_size=64", "model.sampler.train_steps=2",
                "model.sampler.sample_steps=2"],
        "ebm_mlp": ["model.energy_net.hidden=[16,16]", "model.buffer_size=64", "model.sampler.train_steps=2",
                    "model.sampler.sample_steps=2"],
        "flow_matching": ["model.net.channels=8", "model.net.num_res_blocks=1", "model.solver.steps=2",
                          "model.val_likelihood.solver.steps=2", "model.test_likelihood.solver.method=euler",
                          "model.test_likelihood.solver.steps=2"],
        "flow_matching_mlp": ["model.net.hidden=16", "model.net.layers=1", "model.solver.steps=2",
                              "model.val_likelihood.solver.steps=2", "model.test_likelihood.solver.method=euler",
                              "model.test_likelihood.solver.steps=2"],
        "transformer": ["model.net.d_model=16", "model.net.n_layers=1", "model.net.n_heads=2",
                        "dataset.batch_size=8"],
    }.get(name, [])


def _pairs():
    return [(m, d) for m in group_options("model") for d in group_options("dataset") if d not in NO_NETWORK]


@pytest.mark.parametrize("model,dataset", _pairs())
def test_model_dataset_pair_trains_or_is_refused_before_training(model, dataset, make_cfg, fake_data, tmp_path):
    cfg = make_cfg(f"model={model}", f"dataset={dataset}", "trainer=debug", "num_samples=4",
                   *model_overrides(model), *data_overrides(dataset, fake_data))
    family, info = build_family(cfg), instantiate(cfg.dataset).info
    if family.check_data(info) is not None:
        with pytest.raises(IncompatibleConfigError, match=f"model={model} cannot be trained on dataset={dataset}"):
            run(cfg)
        assert not (tmp_path / "run" / "checkpoints").exists()
        return
    results = run(cfg)
    saved = json.loads(open(results["path"]).read())
    assert saved["family"] == family.name and saved["model"] == model and saved["dataset"] == info.name
    if saved["test"]["nll_kind"] == "none":  # no likelihood (set per dataset in build): nothing is made up
        assert saved["test"] == {"nll_kind": "none"}
    else:
        assert math.isfinite(saved["test"]["nll_bpd"]) and saved["test"]["nll_kind"] in ("exact", "bound", "estimate")
    assert 1 <= saved["global_step"] <= 2  # fast_dev_run: two batches (or one epoch of tiny data)


def test_incompatible_combinations_name_the_valid_choices(make_cfg):
    cfg = make_cfg("model=vae_conv", "dataset=text")
    with pytest.raises(IncompatibleConfigError) as err:
        run(cfg)
    can = str(err.value).split("Models that can: ")[1].split(". Fix")[0].split(", ")
    assert "vae" in can and "vae_conv" not in can and "only handles image data" in str(err.value)

    cfg = make_cfg("model.observation={_target_:genlab.distributions.Bernoulli}")  # digits have 17 levels
    with pytest.raises(IncompatibleConfigError, match="needs binary data"):
        run(cfg)

    family = build_family(make_cfg())
    family.objective = object()  # a loss of another family
    with pytest.raises(IncompatibleConfigError, match="Valid choices of loss for model=vae: elbo, iwae"):
        check_compatible(family, instantiate(make_cfg().dataset).info, {"model": "vae", "loss": "other"})


def test_model_brings_its_default_loss_and_loss_overrides_it(make_cfg):
    assert make_cfg("model=vae").loss._target_.endswith("ELBO")
    assert make_cfg("model=vae", "loss=iwae").loss._target_.endswith("IWAE")


def test_unknown_config_values_fail_with_the_available_options(make_cfg):
    with pytest.raises(HydraException, match="Available options in 'model'"):
        make_cfg("model=no_such_model")
    with pytest.raises(HydraException, match="no_such_key"):
        make_cfg("model.no_such_key=1")
