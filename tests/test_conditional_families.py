"""Every likelihood family, class-conditional on labelled toy data whose H(X|Y), H(X) and Bayes-optimal
accuracy are exact: on held-out data no model beats the conditional or the marginal entropy, and the
generative classifier never beats the Bayes-optimal accuracy (each beyond three standard errors)."""

from __future__ import annotations

import math

import pytest

from genlab.data.toy import ToyDataModule

TOY = dict(mode="classes", shape=(1, 2, 4), levels=4, num_templates=3, sharpness=2.0)
OVERRIDES = ["dataset=toy", "dataset.mode=classes", "dataset.shape=[1,2,4]", "dataset.levels=4",
             "dataset.num_templates=3", "+dataset.sharpness=2.0", "dataset.n_train=2000", "dataset.n_val=200",
             "dataset.n_test=300", "+conditional=class", "num_samples=0", "trainer.enable_model_summary=false",
             "callbacks.progress_bar.refresh_rate=0"]
MODELS = {
    "pixelcnn": [], "vae": ["model.test_k=64"], "realnvp": ["model.num_scales=1"], "ddpm_mlp": [],
    "flow_matching_mlp": ["model.test_likelihood.solver.rtol=0.05", "model.test_likelihood.solver.atol=0.05"],
    "ebm_mlp": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_no_conditional_model_beats_the_exact_entropies_or_the_bayes_accuracy(model, tmp_path):
    from genlab.builders import compose_run
    from genlab.train import run

    res = run(compose_run([f"model={model}", *OVERRIDES, "trainer.max_steps=150", *MODELS[model]], tmp_path / "run"))
    t = res["test"]
    if t["nll_kind"] == "none":  # an EBM on images too large to normalise: no likelihood to check
        pytest.skip(f"{model} has no likelihood on these data")
    dm = ToyDataModule(**TOY)
    dims = dm.info.dims * math.log(2)
    assert t["cond_nll_bpd"] >= dm.info.cond_entropy_nats / dims - 3 * t["cond_nll_bpd_se"]
    assert t["nll_bpd"] >= dm.info.entropy_nats / dims - 3 * t["nll_bpd_se"]
    assert t["cond_nll_bpd"] <= t["nll_bpd"] + 3 * t["cond_nll_bpd_se"]  # the label is worth bits, on average
    n = 300
    bayes = dm.bayes_accuracy()
    assert t["classifier_accuracy"] <= bayes + 3 * math.sqrt(bayes * (1 - bayes) / n)
    assert t["classifier_accuracy"] > 1 / 3 + 0.1  # it learned something from the labels
