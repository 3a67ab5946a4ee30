"""DeLong's paired AUC difference variance and the paired prior-override rule."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from spagraph.train.metrics import delong_paired


def test_delong_matches_auc_and_a_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s1 = y + rng.normal(0, 1.0, 400)
    s2 = s1 + rng.normal(0, 0.6, 400)          # correlated with s1: a paired comparison
    a1, a2, var = delong_paired(y, s1, s2)
    assert a1 == pytest.approx(roc_auc_score(y, s1)) and a2 == pytest.approx(roc_auc_score(y, s2))
    boot = []
    for _ in range(400):
        i = rng.integers(0, 400, 400)
        if 0 < y[i].sum() < 400:
            boot.append(roc_auc_score(y[i], s1[i]) - roc_auc_score(y[i], s2[i]))
    assert np.sqrt(var) == pytest.approx(np.std(boot), rel=0.25)
    # paired: far smaller than treating the two AUCs as independent
    _, _, v11 = delong_paired(y, s1, -s1 + 0)   # sanity: anti-scores give AUC 1 - a1
    assert delong_paired(y, s1, s1)[2] == pytest.approx(0.0, abs=1e-12)
    assert v11 > var


def test_delong_ties_and_degenerate_labels():
    y = np.array([0, 0, 1, 1])
    a1, a2, _ = delong_paired(y, np.array([0.5, 0.5, 0.5, 0.5]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert a1 == pytest.approx(0.5) and a2 == pytest.approx(1.0)
    assert delong_paired(np.array([1, 0, 0]), np.zeros(3), np.zeros(3))[2] == float("inf")


def test_paired_rule_recomputes_the_gain_on_the_same_spots():
    """A deep state that only shifts every logit has exactly the prior's AUC: the paired rule keeps
    the prior even when the recorded best AUC claims a large gain; the unpaired rule trusts it."""
    import copy
    import torch
    from spagraph.io.graph_task import graph_task_graphs
    from spagraph.nn import ModelSettings, SpaGraphNet
    from spagraph.train.early_stopping import EarlyStopping
    from spagraph.train.fit import LoopState, TrainSettings, fit_linear_prior, prefer_prior, validation_auc
    gs = graph_task_graphs(3, 200, seed=1, scales=(1.0,))
    g0 = gs[0]
    model = SpaGraphNet(g0.x_img.shape[1], g0.x_gene.shape[1], 1, 8, ModelSettings(hidden=8, heads=2, linear_path=True))
    fit_linear_prior(model, gs[:2], 0)
    prior_state = copy.deepcopy(model.state_dict())
    deep_state = copy.deepcopy(prior_state)
    deep_state["head.3.bias"] = torch.tensor([0.7])
    auc0 = validation_auc(model, [gs[2]], TrainSettings())

    def state():
        st = EarlyStopping(5, 1, True, best_state=deep_state, best_auc=auc0 + 0.2, best_epoch=3)
        return LoopState(stop=st, rng=np.random.default_rng(0), gen=torch.Generator(),
                         history=[{"epoch": -1, "val_auc": auc0}], prior_state=prior_state)
    paired, unpaired = state(), state()
    assert prefer_prior(paired, [gs[2]], model, TrainSettings(prior_rule_se="delong"))
    assert paired.stop.best_epoch == -1
    assert not prefer_prior(unpaired, [gs[2]], model, TrainSettings(prior_rule_se="hanley_mcneil"))
    assert unpaired.stop.best_epoch == 3
