"""Class-conditional runs through the generic module (``+conditional=class``), on labelled toy data whose
``H(X|Y)``, ``H(X)`` and Bayes-optimal accuracy are known exactly, with the tiny exact family of
tests/tiny_family (independent categorical pixels per class)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from genlab.conditioning import ClassCondition, ConditionError, label_prior, marginal_log_likelihood
from genlab.data.toy import ToyDataModule
from genlab.families import base as fb
from genlab.families.base import IncompatibleConfigError

TINY = Path(__file__).parent / "tiny_family"
TOY = ["dataset=toy", "dataset.mode=classes", "dataset.shape=[1,2,2]", "dataset.levels=3",
       "dataset.num_templates=3", "+dataset.sharpness=2.0", "dataset.n_train=3000", "dataset.n_val=1000",
       "dataset.n_test=3000"]


@pytest.fixture
def tiny():
    import tiny_family

    fb._REGISTRY.setdefault(tiny_family.IndependentPixels.name, tiny_family.IndependentPixels)
    yield tiny_family.IndependentPixels
    fb._REGISTRY.pop(tiny_family.IndependentPixels.name, None)


def _cfg(tmp_path, *extra: str, name: str = "run"):
    from genlab.builders import compose_run

    return compose_run(["model=independent", f"hydra.searchpath=[file://{TINY / 'configs'}]", *TOY,
                        "optimizer.lr=0.05", "num_samples=30", "callbacks.progress_bar.refresh_rate=0",
                        "trainer.enable_model_summary=false", *extra], tmp_path / name)


def test_the_labelled_toy_data_have_exact_entropies_and_bayes_accuracy():
    dm = ToyDataModule(mode="classes", shape=(1, 2, 2), levels=3, num_templates=3, sharpness=2.0)
    info = dm.info
    # 0 <= I(X; Y) = H(X) - H(X|Y) <= H(Y) = log 3
    assert 0 < info.entropy_nats - info.cond_entropy_nats < math.log(3)
    # the Bayes-optimal accuracy by enumeration, against the Bayes rule on a large sample
    x, y = dm.draw_labelled(40_000, torch.Generator().manual_seed(5))
    empirical = (dm.class_log_joint(x).argmax(1) == y).double().mean()
    assert float(empirical) == pytest.approx(dm.bayes_accuracy(), abs=0.01)
    # the empirical label frequencies match p(y) = 1/3
    assert label_prior(y, 3) == pytest.approx((1 / 3,) * 3, abs=0.01)


def test_the_marginal_is_the_exact_logsumexp_of_the_conditionals(tiny, tmp_path):
    from genlab.train import build_run, prepare

    cfg = _cfg(tmp_path, "+conditional=class")
    run_config, _, read = prepare(cfg)
    module, dm, _, _ = build_run(cfg, run_config, {"model": "independent"}, read)
    with torch.no_grad():
        module.nets["logits"].theta.normal_()
    batch = next(iter(dm.test_dataloader()))
    ll = module.likelihood(batch, "test", seed=0)
    prior = torch.tensor(module.family.condition.prior, dtype=torch.float64)
    by_hand = torch.stack([module.family.log_px_per_dim(module.nets, batch["x"], torch.full_like(batch["y"], k))
                           .sum(-1).double() for k in range(3)], 1)
    torch.testing.assert_close(ll.log_px, torch.logsumexp(by_hand + prior.log(), 1))
    torch.testing.assert_close(ll.extras["cond_log_px"], by_hand.gather(1, batch["y"][:, None])[:, 0])
    assert ll.kind == "exact"
    # marginal_log_likelihood itself: with one class it is the conditional
    torch.testing.assert_close(marginal_log_likelihood(by_hand[:, :1], torch.zeros(1, dtype=torch.float64)),
                               by_hand[:, 0])


def test_a_conditional_run_beats_neither_entropy_and_reaches_both(tiny, tmp_path):
    from genlab.train import run

    res = run(_cfg(tmp_path, "+conditional=class", "trainer.max_steps=300"))
    info = ToyDataModule(mode="classes", shape=(1, 2, 2), levels=3, num_templates=3, sharpness=2.0).info
    t, d = res["test"], 4 * math.log(2)
    cond_floor, floor = info.cond_entropy_nats / d, info.entropy_nats / d
    # held-out NLLs never beat the true entropies (beyond 3 standard errors), and the exact model class
    # trained on 3000 examples comes within 0.03 bits/dim of them
    assert cond_floor - 3 * t["cond_nll_bpd_se"] <= t["cond_nll_bpd"] <= cond_floor + 0.03
    assert floor - 3 * t["nll_bpd_se"] <= t["nll_bpd"] <= floor + 0.03
    assert t["cond_nll_bpd"] < t["nll_bpd"] and t["nll_kind"] == "exact"
    bayes = ToyDataModule(mode="classes", shape=(1, 2, 2), levels=3, num_templates=3, sharpness=2.0).bayes_accuracy()
    assert bayes - 0.04 <= t["classifier_accuracy"] <= bayes + 0.02  # 3000 test examples: SE ~0.004
    assert res["conditional"]["num_classes"] == 3 and res["conditional"]["prior"] == pytest.approx([1 / 3] * 3, abs=0.03)
    # the grid: one row per class (30 samples -> 10 per class), and the samples follow their class
    x = torch.load(Path(res["path"]).parent / "samples.pt")
    assert x.shape == (30, 1, 2, 2)
    dm = ToyDataModule(mode="classes", shape=(1, 2, 2), levels=3, num_templates=3, sharpness=2.0)
    wanted = torch.arange(3).repeat_interleave(10)
    assert (dm.class_log_joint(x).argmax(1) == wanted).double().mean() > 0.7


def test_with_one_class_conditional_and_unconditional_runs_agree(tiny, tmp_path):
    from genlab.train import run

    one = ["dataset.num_templates=1", "trainer.max_steps=40", "num_samples=0"]
    cond = run(_cfg(tmp_path, "+conditional=class", *one, name="cond"))
    plain = run(_cfg(tmp_path, *one, name="plain"))
    assert cond["test"]["nll_bpd"] == pytest.approx(plain["test"]["nll_bpd"], abs=1e-6)
    assert cond["test"]["cond_nll_bpd"] == pytest.approx(plain["test"]["nll_bpd"], abs=1e-6)
    assert "cond_nll_bpd" not in plain["test"] and plain["conditional"] is None


def test_conditional_runs_are_refused_on_unlabelled_data_and_for_families_without_it(tiny, tmp_path):
    from genlab.builders import build_family, compose_run
    from hydra.utils import instantiate

    cfg = _cfg(tmp_path, "+conditional=class", "dataset.mode=independent")
    with pytest.raises(IncompatibleConfigError, match=r"needs labels.*Datasets with labels: .*digits.*mnist"):
        build_family(cfg, instantiate(cfg.dataset))

    class Plain(fb.Family):  # not Conditional (and not registered: no name)
        pass

    cond = ClassCondition(3)
    from genlab.builders import build_condition

    with pytest.raises(IncompatibleConfigError, match=r"cannot train family.*independent"):
        build_condition(cfg, Plain(), instantiate(cfg.dataset))
    with pytest.raises(IncompatibleConfigError, match="with its datamodule"):
        build_family(cfg)
    with pytest.raises(IncompatibleConfigError, match=r"conditional.dropout=1.5"):
        bad = compose_run([*TOY, "+conditional=class", "conditional.dropout=1.5"], tmp_path / "bad")
        build_condition(bad, tiny(), instantiate(bad.dataset))
    assert cond.null_label == 3


def test_labels_are_checked(tiny, tmp_path):
    from genlab.train import build_run, prepare

    cfg = _cfg(tmp_path, "+conditional=class")
    run_config, _, read = prepare(cfg)
    module, dm, _, _ = build_run(cfg, run_config, {"model": "independent"}, read)
    batch = next(iter(dm.test_dataloader()))
    with pytest.raises(ConditionError, match=r"labels must lie in 0..2"):
        module.family.loss(module.nets, {**batch, "y": batch["y"] + 3})
    with pytest.raises(ConditionError, match="needs a label per example"):
        module.family.log_likelihood(module.nets, {"x": batch["x"]})
    with pytest.raises(ConditionError, match="1-D integer"):
        module.sample(4, y=torch.zeros(4))
    assert module.sample(6, seed=0, y=torch.tensor([0, 0, 1, 1, 2, 2])).shape == (6, 1, 2, 2)
    # an unconditional module refuses labels
    plain_cfg = _cfg(tmp_path, name="plain")
    run_config, _, read = prepare(plain_cfg)
    plain, _, _, _ = build_run(plain_cfg, run_config, {"model": "independent"}, read)
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(2, y=torch.zeros(2, dtype=torch.long))


def test_label_dropout_uses_the_null_label():
    cond = ClassCondition(4, dropout=0.5)
    torch.manual_seed(0)
    y = cond.drop(torch.zeros(10_000, dtype=torch.long), 0.5)
    assert set(y.unique().tolist()) == {0, 4}
    assert float((y == 4).double().mean()) == pytest.approx(0.5, abs=0.02)
    assert torch.equal(cond.drop(y, 0.0), y)
    assert cond.grid_labels(10).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_the_generative_classifier_reaches_the_bayes_accuracy_and_never_beats_it(tiny, tmp_path):
    from genlab.tasks.cli import run_task
    from genlab.train import run

    res = run(_cfg(tmp_path, "+conditional=class", "trainer.max_steps=300", "num_samples=0"))
    out = run_task("classify", [f"ckpt={Path(res['path']).parent}", "n=3000", f"out={tmp_path / 'clf'}"])
    bayes = ToyDataModule(mode="classes", shape=(1, 2, 2), levels=3, num_templates=3, sharpness=2.0).bayes_accuracy()
    # never above the Bayes-optimal accuracy by more than 3 standard errors, and close to it
    assert bayes - 0.03 <= out["accuracy"] <= bayes + 3 * out["accuracy_se"]
    assert out["source"] == "exact" and 0 <= out["ece"] < 0.05
    # the label's worth: an estimate of I(X; Y) in [0, H(Y)]; the exact I(X;Y) = H(X) - H(X|Y)
    info = ToyDataModule(mode="classes", shape=(1, 2, 2), levels=3, num_templates=3, sharpness=2.0).info
    mi_bits = (info.entropy_nats - info.cond_entropy_nats) / math.log(2)
    assert 0 <= out["label_bits"] <= out["label_entropy_bits"]
    assert out["label_bits"] == pytest.approx(mi_bits, abs=4 * out["label_bits_se"] + 0.02)
    assert (tmp_path / "clf" / "reliability.png").exists()
    assert json.loads((tmp_path / "clf" / "classify.json").read_text())["n"] == 3000


def test_classify_refuses_an_unconditional_run(tiny, tmp_path):
    from genlab.tasks.base import TaskError
    from genlab.tasks.cli import run_task
    from genlab.train import run

    res = run(_cfg(tmp_path, "trainer.max_steps=5", "num_samples=0"))
    with pytest.raises(TaskError, match=r"unconditional.*\+conditional=class"):
        run_task("classify", [f"ckpt={Path(res['path']).parent}", f"out={tmp_path / 'clf'}"])


@pytest.mark.slow
def test_genlab_eval_scores_conditional_samples_and_a_label_permuted_model_does_worse(tiny, tmp_path):
    from genlab.builders import compose_run
    from genlab.checkpoints import read_checkpoint
    from genlab.evaluate import evaluate, table
    from genlab.train import run

    cfg = compose_run(["model=independent", f"hydra.searchpath=[file://{TINY / 'configs'}]", "dataset=digits",
                       "+conditional=class", "optimizer.lr=0.1", "trainer.max_steps=150", "num_samples=0",
                       "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false"], tmp_path / "run")
    res = run(cfg)
    run_dir = Path(res["path"]).parent
    out = evaluate(run_dir, n=300, cache_dir=tmp_path / "clf")
    cond = out["conditional"]
    assert cond["label_accuracy"] > 0.6 and cond["intra_fd"] is not None
    assert "label accuracy" in table(out)
    # the same model with its class tables permuted (class k draws class k+1's images): the requested labels
    # are no longer what the samples show
    ckpt = Path(res["checkpoint"])
    state = read_checkpoint(str(ckpt))
    theta = state["state_dict"]["nets.logits.theta"]
    perm = torch.cat([torch.arange(1, 10), torch.tensor([0, 10])])
    state["state_dict"]["nets.logits.theta"] = theta[perm]
    for key in ("current_model_state",):
        state.pop(key, None)
    permuted = tmp_path / "permuted.ckpt"
    torch.save(state, permuted)
    worse = evaluate(permuted, n=300, cache_dir=tmp_path / "clf")["conditional"]
    assert worse["label_accuracy"] < cond["label_accuracy"] - 0.4


def test_a_guidance_sweep_is_refused_for_a_family_without_guidance(tiny, tmp_path, capsys):
    from genlab.evaluate import main
    from genlab.train import run

    res = run(_cfg(tmp_path, "+conditional=class", "trainer.max_steps=5", "num_samples=0"))
    assert main([str(Path(res["path"]).parent), "--guidance", "1,2"]) == 2
    err = capsys.readouterr().err
    assert "has no guidance weight" in err and "diffusion" in err and "flow_matching" in err


def test_classify_is_offered_to_conditional_families_with_a_likelihood_only():
    from genlab.tasks.registry import TASKS

    able = TASKS["classify"].families.split(", ")
    assert "gan" not in able and {"autoregressive", "vae", "flow", "diffusion", "flow_matching", "ebm"} <= set(able)
