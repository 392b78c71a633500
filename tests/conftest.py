"""Shared fixtures: compose run configs the way ``genlab-train`` does, into a temp dir."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import DictConfig

from genlab import builders

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # small ops: one thread is faster and steady when other jobs share the CPU


def compose_run(overrides: list[str], output_dir) -> DictConfig:
    """Compose ``configs/train.yaml`` with overrides into ``output_dir``, as ``@hydra.main`` does
    for a real run (:func:`genlab.builders.compose_run`)."""
    return builders.compose_run(list(overrides), output_dir)


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides, name="run")`` -> a composed config writing into ``tmp_path/name``."""

    def _make(*overrides: str, name: str = "run") -> DictConfig:
        return compose_run(list(overrides), tmp_path / name)

    return _make


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory):
    """A data dir with tiny MNIST/CIFAR-10 (real formats), a text file and an npz array."""
    from fakes import write_fake_datasets

    return write_fake_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``trained_run(name, *overrides) -> results dict`` of a real short training (``genlab.train.run``),
    trained once per test session and name (tasks share tiny checkpoints across test files)."""
    from genlab.train import run

    cache: dict[str, dict] = {}
    root = tmp_path_factory.mktemp("trained")

    def _trained(name: str, *overrides: str) -> dict:
        if name not in cache:
            cfg = compose_run(["num_samples=4", "callbacks.progress_bar.refresh_rate=0", *overrides], root / name)
            cache[name] = run(cfg)
        return cache[name]

    return _trained


@pytest.fixture
def tiny_infogan(trained_run):
    """``tiny_infogan(*overrides) -> (family, nets, generator, inputs)``: a 4-channel DCGAN with 3 InfoGAN
    codes on the default digits, trained 4 steps (once per session), reloaded with ``overrides``
    (e.g. a sampler setting) in eval mode; ``inputs`` collects every input ``(z, one-hot code)``
    that its sampling generator sees from then on."""
    from genlab.builders import load_run

    results = trained_run("tiny_infogan", "model=dcgan", "model.generator.channels=4", "model.discriminator.channels=4",
                          "model.categorical_codes=3", "trainer.max_steps=4", "trainer.limit_val_batches=1",
                          "trainer.limit_test_batches=1")

    def _load(*overrides: str):
        module, _ = load_run(results["checkpoints"]["last"], overrides=list(overrides))
        family, nets = module.family, module.nets
        nets.eval()
        generator = family.sampling_generator(nets)
        inputs: list[torch.Tensor] = []
        generator.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
        return family, nets, generator, inputs

    return _load
