"""Adversarial slice discriminator (gradient reversal, DANN) and MMD alignment to the label-free
test slice (spagraph/train/adapt.py): the reversal layer, the MMD statistic, label-freeness,
determinism, and that each term really acts on training."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spagraph.nn import ModelSettings
from spagraph.train.adapt import (SliceDiscriminator, dann_ramp, median_bandwidth, mmd_loss, reverse_gradient,
                                  strip_labels)
from spagraph.train.fit import TrainSettings, fit, predict_scores

sys.path.insert(0, str(Path(__file__).parent))
from test_adapt import _graph, _shuffled_labels  # noqa: E402

TERMS = [dict(adversarial_weight=1.0), dict(mmd_weight=1.0)]
MS = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0)
TS = dict(epochs=3, min_epochs=3, patience=5, lr=1e-2)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_gradient_reversal_is_identity_forward_and_flips_and_scales_the_gradient(scale):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    y = reverse_gradient(x, scale)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -scale * w)


def test_dann_ramp_rises_from_zero_towards_one():
    vals = [dann_ramp(p) for p in np.linspace(0, 1, 11)]
    assert vals[0] == 0.0 and all(b > a for a, b in zip(vals, vals[1:])) and 0.99 < vals[-1] < 1.0


def test_mmd_is_zero_for_one_sample_and_grows_with_the_shift():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, generator=gen), torch.randn(200, 4, generator=gen)
    assert float(mmd_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    same, near, far = (float(mmd_loss(a, b + d)) for d in (0.0, 0.5, 2.0))
    assert same < 0.02 < near < far
    src = a.clone().requires_grad_(True)
    mmd_loss(src, b + 1.0).backward()
    assert src.grad.abs().sum() > 0
    assert float(mmd_loss(a[:0], b)) == 0.0
    # the median heuristic is the median pairwise distance of the pooled sets
    z = torch.cat([a[:20], b[:20]])
    d = torch.cdist(z, z)
    assert float(median_bandwidth(a[:20], b[:20])) == pytest.approx(float(d[np.triu_indices(40, 1)].median()), rel=1e-6)


@pytest.mark.parametrize("term", TERMS)
def test_alignment_never_reads_test_labels_and_is_deterministic(term):
    train, val, test = [_graph(0), _graph(1)], [_graph(2)], _graph(3, shift=0.7)
    runs = []
    for t in (test, _shuffled_labels(test, 1), test):
        res = fit(train, val, MS, TrainSettings(**term, **TS), seed=0, target=[strip_labels(t)])
        runs.append((predict_scores(res.model, t), res.model.state_dict(), res.history))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][0], runs[2][0])
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][2] == runs[2][2]
    with pytest.raises(ValueError, match="strip_labels"):
        fit(train, val, MS, TrainSettings(**term, **TS), seed=0, target=[test])


@pytest.mark.parametrize("term", TERMS + [dict(adversarial_weight=1.0, tiles_per_step=2, tile_size=400.0)])
def test_each_term_changes_training_and_stays_out_of_the_model_state(term):
    train, val, test = [_graph(0), _graph(1)], [_graph(2)], _graph(3, shift=0.7)
    base = {k: v for k, v in term.items() if k not in ("adversarial_weight", "mmd_weight")}
    on = fit(train, val, MS, TrainSettings(**term, **TS), seed=0, target=[strip_labels(test)])
    off = fit(train, val, MS, TrainSettings(**base, **TS), seed=0, target=[strip_labels(test)])
    name = "disc_ce" if "adversarial_weight" in term else "mmd"
    assert all(name in h for h in on.history if h["epoch"] >= 0)
    sd_on, sd_off = on.model.state_dict(), off.model.state_dict()
    assert sd_on.keys() == sd_off.keys()    # the discriminator is no part of the model (saved models load as before)
    trained = [k for k in sd_on if sd_on[k].is_floating_point() and not torch.equal(sd_on[k], sd_off[k])]
    assert trained, "the alignment term left every weight as without it"
    assert not np.allclose(predict_scores(on.model, test), predict_scores(off.model, test))


@pytest.mark.parametrize("term", [dict(adversarial_weight=1.0), dict(mmd_weight=1.0, align_ramp=True),
                                  dict(coral_weight=1.0, align_ramp=True)])
def test_the_ramped_terms_reach_the_features_only_after_the_ramp_starts(term):
    """In the first epoch the reversal scale (and with ``align_ramp`` the CORAL / MMD weight) is
    0: the discriminator learns, the model's features get no alignment gradient, so a one-epoch
    fit equals one without the term (without dropout no other draw differs: the discriminator
    has its own seeded stream); the second epoch differs."""
    train, val, test = [_graph(0), _graph(1)], [_graph(2)], _graph(3, shift=0.7)
    ms = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0, dropout=0.0, input_dropout=0.0)
    for epochs, same in ((1, True), (2, False)):
        one = dict(epochs=epochs, min_epochs=epochs, patience=5, lr=1e-2)
        on = fit(train, val, ms, TrainSettings(**term, **one), seed=0, target=[strip_labels(test)])
        off = fit(train, val, ms, TrainSettings(**one), seed=0, target=[strip_labels(test)])
        first = next(h for h in on.history if h["epoch"] == 0)
        assert first.get("reversal", first.get("ramp")) == 0.0
        assert np.array_equal(predict_scores(on.model, test), predict_scores(off.model, test)) == same


def test_slice_discriminator_shapes_and_reset():
    d = SliceDiscriminator(6, 4)
    h = torch.randn(10, 6)
    assert d(h).shape == (10, 4)
    before = [p.detach().clone() for p in d.parameters()]
    torch.manual_seed(3)
    d.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, d.parameters()))


def test_a_resumed_adversarial_fit_goes_on_as_the_uninterrupted_one():
    """The discriminator, its optimiser and the ramp travel in the training checkpoint."""
    import copy
    train, val, test = [_graph(0), _graph(1)], [_graph(2)], _graph(3, shift=0.7)
    ms = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0)
    ts = TrainSettings(adversarial_weight=1.0, epochs=4, min_epochs=4, patience=5, lr=1e-2, one_se_rule=False)
    states = {}
    ref = fit(train, val, ms, ts, seed=0, target=[strip_labels(test)],
              on_epoch=lambda e, rec, state_fn: states.__setitem__(e, copy.deepcopy(state_fn())))
    assert states[1]["align"]["epoch"] == 1 and "disc" in states[1]["align"]
    resumed = fit(train, val, ms, ts, seed=0, target=[strip_labels(test)], init_state=copy.deepcopy(states[1]))
    assert resumed.history == ref.history
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_the_new_weights_leave_config_hashes_alone_at_their_default():
    from spagraph.experiment.config import validate_config
    d = {"data": {"sources": [{"reader": "synthetic"}]}, "train": {"epochs": 2}}
    h = validate_config(d).config_hash()
    zero = validate_config({**d, "train": {"epochs": 2, "mmd_weight": 0.0, "adversarial_weight": 0.0}})
    assert zero.config_hash() == h
    for key, v in (("mmd_weight", 0.5), ("adversarial_weight", 0.5), ("adversarial_lr_scale", 0.5), ("align_ramp", True)):
        assert validate_config({**d, "train": {"epochs": 2, key: v}}).config_hash() != h
    with pytest.raises(ValueError):
        validate_config({**d, "train": {"adversarial_weight": -1.0}})
