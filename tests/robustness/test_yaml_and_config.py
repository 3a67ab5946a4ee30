"""Duplicate YAML keys (every YAML spagraph reads) and config values that used to fail deep inside
a run: each refused at load with the file, both line numbers or the key, and what was expected."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spagraph.cli import app
from spagraph.experiment.config import ConfigError, load_config

pytestmark = pytest.mark.bad_input

GOOD = """\
name: rb
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 120, seed: 5, with_image: false}
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 10, n_hvg: 100}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4}
model: {hidden: 16, heads: 2}
train:
  epochs: 2
  seeds: [0, 1, 2]
track: {mode: disabled}
"""


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def one_line_error(code, out, *needles):
    assert code == 2, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, f"{n!r} not in:\n{out}"


def test_two_train_blocks_name_both_lines(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD + "train:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml:12: duplicate key 'train': first at line 8, again at line 12"):
        load_config(p)
    code, out = cli("run", p, "--out", tmp_path / "o")
    one_line_error(code, out, "duplicate key 'train'", "line 8", "line 12")
    assert not (tmp_path / "o").exists()


def test_nested_duplicate_key(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 5\n"))
    with pytest.raises(ConfigError, match=r"duplicate key 'epochs': first at line 9, again at line 10"):
        load_config(p)


def test_duplicate_key_in_flow_mapping(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD.replace("{hidden: 16, heads: 2}", "{hidden: 16, heads: 2, hidden: 32}"))
    with pytest.raises(ConfigError, match=r"duplicate key 'hidden'"):
        load_config(p)


def test_duplicate_key_in_extended_parent(tmp_path):
    (tmp_path / "base.yaml").write_text(GOOD + "name: other\n")
    p = tmp_path / "child.yaml"
    p.write_text("extends: base.yaml\nmodel: {hidden: 8, heads: 2}\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:12: duplicate key 'name': first at line 1"):
        load_config(p)


def test_merge_keys_still_override(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD.replace("model: {hidden: 16, heads: 2}", "small: &s {hidden: 16, heads: 2}\nmodel:\n  <<: *s\n  hidden: 8")
                 .replace("track: {mode: disabled}", "track: {mode: disabled}"))
    with pytest.raises(ConfigError, match="unknown key 'small'"):    # merged fine; the anchor block itself is unknown
        load_config(p)


def test_set_value_with_duplicate_key(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD)
    with pytest.raises(ConfigError, match=r"--set model=\{hidden: 8, hidden: 16\}.*duplicate key 'hidden'"):
        load_config(p, ["model={hidden: 8, hidden: 16}"])


def test_suite_yaml_duplicate_key(tmp_path):
    from spagraph.bench.suite import load_suite
    (tmp_path / "exp.yaml").write_text(GOOD)
    s = tmp_path / "suite.yaml"
    s.write_text("name: s\nentries:\n  - {name: a, experiment: exp.yaml}\nentries:\n  - {name: b, experiment: exp.yaml}\n")
    with pytest.raises(ValueError, match=r"suite\.yaml:4: duplicate key 'entries': first at line 2"):
        load_suite(s)
    code, out = cli("bench", s, "--out", tmp_path / "b")
    one_line_error(code, out, "duplicate key 'entries'")


def test_dataset_card_duplicate_key(tmp_path):
    from spagraph.io.cards import load_card
    c = tmp_path / "card.yaml"
    c.write_text("name: x\nreader: h5ad\nfiles: []\nslices: [a]\nslices: [b]\n")
    with pytest.raises(ValueError, match=r"card\.yaml:5: duplicate key 'slices': first at line 4"):
        load_card(c)


def test_run_config_with_duplicate_key_in_report(tmp_path):
    from spagraph.report.analysis import _read_run
    (tmp_path / "config.yaml").write_text("name: a\nname: b\n")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "predictions.csv").write_text("slice,spot,seed,score,pred,label\n")
    with pytest.raises(ValueError, match=r"config\.yaml.*duplicate key 'name'"):
        _read_run(tmp_path)


def test_embed_set_value_duplicate_key(tmp_path):
    code, out = cli("embed", tmp_path / "x.h5ad", "--out", tmp_path / "e.h5ad", "--set", "n_pcs={a: 1, a: 2}")
    one_line_error(code, out, "--set", "duplicate key 'a'")


# ------------------------------------------------------------------ config values


def test_empty_seeds_rejected_at_load_for_run(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD.replace("seeds: [0, 1, 2]", "seeds: []"))
    code, out = cli("run", p, "--out", tmp_path / "o")
    one_line_error(code, out, "train.seeds is empty", "exp.yaml:10")
    assert "No objects to concatenate" not in out and not (tmp_path / "o").exists()


def test_empty_seeds_rejected_for_tune(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD.replace("seeds: [0, 1, 2]", "seeds: []") +
                 "search:\n  train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    code, out = cli("tune", p, "--trials", "1", "--out", tmp_path / "t", "--no-progress")
    one_line_error(code, out, "train.seeds is empty")
    assert "optuna" not in out.lower()


def test_empty_seeds_via_set(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD)
    with pytest.raises(ConfigError, match=r"--set train\.seeds.*train\.seeds is empty"):
        load_config(p, ["train.seeds=[]"])


def test_duplicate_seeds_rejected(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(GOOD.replace("seeds: [0, 1, 2]", "seeds: [0, 1, 0]"))
    with pytest.raises(ConfigError, match=r"seed\(s\) \[0\] more than once"):
        load_config(p)


def test_empty_sources_rejected(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("name: x\ndata:\n  sources: []\n")
    with pytest.raises(ConfigError, match=r"data\.sources"):
        load_config(p)
