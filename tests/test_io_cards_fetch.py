"""Dataset cards and fetch: file:// and directory mirrors, skip when present, checksum mismatch,
reading a fetched dataset through the experiment's `reader: card`."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from spagraph.io.cards import load_card, read_card
from spagraph.io.fetch import fetch_dataset

REPO = Path(__file__).resolve().parents[1]
FILES = ["counts/A1.tsv.gz", "spots/A1_selection.tsv", "labels/A1_labeled_coordinates.tsv"]
UPSTREAM = {"counts/A1.tsv.gz": "data/ST-cnts/A1.tsv.gz", "spots/A1_selection.tsv": "data/ST-spotfiles/A1_selection.tsv",
            "labels/A1_labeled_coordinates.tsv": "data/ST-pat/lbl/A1_labeled_coordinates.tsv"}


@pytest.fixture
def mirror(tmp_path, her2st_root):
    """A mirror with the upstream layout holding A1's three files (copies inside tmp only)."""
    m = tmp_path / "mirror"
    for local, up in UPSTREAM.items():
        (m / up).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(her2st_root / local, m / up)
    return m


def _mini_card(tmp_path, sha_override=None) -> Path:
    """A card with only A1's files, checksums taken from the real her2st card."""
    full = yaml.safe_load((REPO / "datasets" / "her2st.yaml").read_text())
    files = [f for f in full["files"] if f["path"] in FILES]
    if sha_override:
        for f in files:
            f["sha256"] = sha_override.get(f["path"], f["sha256"])
    card = dict(full, name="her2st_a1", slices=["A1"], files=files)
    p = tmp_path / "her2st_a1.yaml"
    p.write_text(yaml.safe_dump(card))
    return p


def test_every_card_loads_and_transfer_cards_exist():
    for name in ("her2st", "vihbc", "xehbc", "ducis", "crc", "st_colon"):
        c = load_card(name)
        assert c.name == name and c.reader in ("her2st", "spaceranger", "h5ad", "xenium")
    her = load_card("her2st")
    assert her.slices == ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"]
    assert len([f for f in her.files if f.path.startswith("counts/")]) == 8
    assert all(f.sha256 and len(f.sha256) == 64 for f in her.files)
    assert [f.path for f in her.files if f.url is None] == ["images/A1.png"]
    assert not load_card("vihbc").available_here


def test_her2st_card_checksums_match_local_copy(her2st_root):
    for f in load_card("her2st").files:
        assert hashlib.sha256((her2st_root / f.path).read_bytes()).hexdigest() == f.sha256, f.path


def test_fetch_file_url_mirror_then_skip(tmp_path, mirror):
    card = _mini_card(tmp_path)
    dest = tmp_path / "dest"
    st = fetch_dataset(card, dest, mirror=mirror.as_uri(), progress=False)
    assert st == {f: "downloaded" for f in FILES}
    for f in FILES:
        assert (dest / f).read_bytes() == (mirror / UPSTREAM[f]).read_bytes()
    mtimes = {f: (dest / f).stat().st_mtime_ns for f in FILES}
    st2 = fetch_dataset(card, dest, mirror=str(mirror), progress=False)   # plain directory as mirror
    assert st2 == {f: "present" for f in FILES}
    assert mtimes == {f: (dest / f).stat().st_mtime_ns for f in FILES}
    # the fetched root reads with the card's reader and label mapping
    slices = read_card(card, dest)
    assert list(slices) == ["A1"] and slices["A1"].n_obs == 346
    assert slices["A1"].obs["annotation"].notna().sum() == 346


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    bad = "0" * 64
    card = _mini_card(tmp_path, {"spots/A1_selection.tsv": bad})
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"spots/A1_selection.tsv.*expected (sha256 )?0{64}, got [0-9a-f]{64}"):
        fetch_dataset(card, dest, mirror=mirror.as_uri(), progress=False)
    assert not (dest / "spots" / "A1_selection.tsv").exists()
    leftovers = [p.name for p in dest.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []


def test_fetch_corrupted_existing_file_is_replaced(tmp_path, mirror):
    card = _mini_card(tmp_path)
    dest = tmp_path / "dest"
    (dest / "spots").mkdir(parents=True)
    (dest / "spots" / "A1_selection.tsv").write_text("garbage")
    st = fetch_dataset(card, dest, mirror=str(mirror), progress=False)
    assert st["spots/A1_selection.tsv"] == "downloaded"
    assert (dest / "spots" / "A1_selection.tsv").read_bytes() == (mirror / UPSTREAM["spots/A1_selection.tsv"]).read_bytes()


def test_fetch_null_sha_warns_and_missing_source_names_url(tmp_path, mirror):
    card = _mini_card(tmp_path)
    d = yaml.safe_load(card.read_text())
    d["files"][0]["sha256"] = None
    card.write_text(yaml.safe_dump(d))
    with pytest.warns(UserWarning, match="no sha256"):
        fetch_dataset(card, tmp_path / "d1", mirror=str(mirror), progress=False)
    with pytest.raises(OSError, match="empty_mirror.*not found"):
        fetch_dataset(card, tmp_path / "d2", mirror=str(tmp_path / "empty_mirror"), progress=False)


def test_fetch_cli(tmp_path, mirror):
    from typer.testing import CliRunner
    from spagraph.cli import app
    card = _mini_card(tmp_path)
    res = CliRunner().invoke(app, ["fetch", str(card), "--dest", str(tmp_path / "c"), "--mirror", mirror.as_uri()])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "counts" / "A1.tsv.gz").is_file()
    res = CliRunner().invoke(app, ["fetch", "no_such_dataset", "--dest", str(tmp_path / "c")])
    assert res.exit_code == 2 and "no_such_dataset" in res.output and "known cards" in res.output


def test_bad_cards(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nreader: nanostring\nfiles: []\n")
    with pytest.raises(ValueError, match=r"c.yaml.*nanostring"):
        load_card(p)
    p.write_text("name: x\nreader: her2st\nfiles:\n  - {path: ../evil, url: a, sha256: null}\n")
    with pytest.raises(ValueError, match=r"c.yaml.*must be relative"):
        load_card(p)
    p.write_text("name: x\nreader: her2st\nfiles:\n  - {path: a, url: a, sha256: abc}\n")
    with pytest.raises(ValueError, match=r"c.yaml.*64 hex"):
        load_card(p)
    p.write_text("name: x\nreader: her2st\nlabel_mapping: {tumour: [a]}\nfiles: []\n")
    with pytest.raises(ValueError, match="label_mapping.*unknown keys"):
        load_card(p)


def test_experiment_reader_card(tmp_path, mirror):
    from spagraph.experiment.config import SliceSource
    from spagraph.experiment.data import load_source
    card = _mini_card(tmp_path)
    fetch_dataset(card, tmp_path / "root", mirror=str(mirror), progress=False)
    got = load_source(SliceSource(reader="card", card=str(card), root=str(tmp_path / "root"), names=["A1"]))
    assert list(got) == ["A1"] and got["A1"].n_obs == 346
    with pytest.raises(FileNotFoundError, match="spagraph fetch vihbc"):
        load_source(SliceSource(reader="card", card="vihbc", root=str(tmp_path / "nowhere")))
