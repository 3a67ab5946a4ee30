import pytest
import yaml

from spagraph.experiment.config import ConfigError, load_config

BASE = """\
name: base
data:
  sources:
    - reader: synthetic
      n_slices: 3
model:
  hidden: 32
  heads: 4
train:
  lr: 0.001
  seeds: [0]
"""


@pytest.fixture
def base(tmp_path):
    p = tmp_path / "base.yaml"
    p.write_text(BASE)
    return p


def test_loads_defaults(base):
    cfg = load_config(base)
    assert cfg.model.hidden == 32 and cfg.graph.n_dir_bins == 8 and cfg.protocol.kind == "loso"


def test_unknown_key_names_key_and_line(base, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(BASE.replace("  lr: 0.001", "  lr: 0.001\n  learning_rate: 3"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.learning_rate" in msg and f"{p}:11" in msg


def test_wrong_type_names_key_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(BASE.replace("hidden: 32", "hidden: big"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "model.hidden" in str(e.value) and f"{p}:7" in str(e.value)


def test_extends_merges_and_overrides(base, tmp_path):
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("extends: ../base.yaml\nname: child\ntrain:\n  lr: 0.01\n")
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.train.lr == 0.01 and cfg.model.hidden == 32 and cfg.train.seeds == [0]


def test_set_overrides_and_errors(base):
    cfg = load_config(base, ["train.lr=3e-4", "graph.scales=[1, 2]", "model.cross_attention=false"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.graph.scales == [1.0, 2.0] and not cfg.model.cross_attention
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(base, ["train.lr"])
    with pytest.raises(ConfigError, match="--set train.nope"):
        load_config(base, ["train.nope=1"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(base, ["train.epochs=-3"])


def test_extends_cycle(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n"); b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_shipped_experiments_validate():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "experiments"
    files = [p for p in root.rglob("*.yaml") if "suites" not in p.parts]
    assert any(p.name == "her2st_loso.yaml" for p in files)
    for p in files:
        load_config(p)
