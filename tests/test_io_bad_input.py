"""Bad input to the readers: each a clear ValueError naming the file and what is wrong.
A tiny legacy-ST (her2st layout) root is written into tmp and then broken one way per test."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from spagraph.io import read_her2st

pytestmark = pytest.mark.bad_input

GENES = ["ERBB2", "KRT19", "COL1A1", "PTPRC"]
SPOTS = [(x, y) for y in range(10, 13) for x in range(5, 9)]          # 12 spots on a 4 x 3 array


def counts_text(spots=SPOTS, genes=GENES, sep="\t", value=lambda i, j: (i + 2 * j) % 5):
    rows = [sep.join([""] + genes)]
    rows += [sep.join([f"{x}x{y}"] + [str(value(i, j)) for j in range(len(genes))]) for i, (x, y) in enumerate(spots)]
    return "\n".join(rows) + "\n"


def make_root(tmp: Path, counts: str | None = None, selection: str | None = None, labels: str | None = None,
              image: tuple[int, int] | None = None) -> Path:
    root = tmp / "st"
    for d in ("counts", "spots", "labels"):
        (root / d).mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "counts" / "S1.tsv.gz", "wt") as f:
        f.write(counts if counts is not None else counts_text())
    if selection is None:
        selection = "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n" + "".join(
            f"{x}\t{y}\t{x}.02\t{y}.01\t{100 * x:.1f}\t{100 * y:.1f}\t1\n" for x, y in SPOTS)
    (root / "spots" / "S1_selection.tsv").write_text(selection)
    if labels is None:
        labels = "Row.names\tx\ty\tpixel_x\tpixel_y\tlabel\n" + "".join(
            f"{x}x{y}\t{x + 0.03}\t{y - 0.04}\t1\t1\t{'invasive cancer' if x < 7 else 'connective tissue'}\n"
            for x, y in SPOTS)
    (root / "labels" / "S1_labeled_coordinates.tsv").write_text(labels)
    if image:
        from PIL import Image
        (root / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((image[1], image[0], 3), 180, np.uint8)).save(root / "images" / "S1.png")
    return root


def test_good_root_reads(tmp_path):
    """The unbroken fixture reads: the broken variants below fail only for what they break."""
    a = read_her2st(make_root(tmp_path, image=(1000, 1400)), "S1")
    assert a.n_obs == 12 and a.obs["cancer"].tolist().count(1) == 6
    assert np.allclose(a.obsm["spatial"][0], [500, 1000])
    assert a.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(50)


def test_missing_column(tmp_path):
    sel = "x\ty\tnew_x\tnew_y\tpixel_x\tselected\n" + "".join(f"{x}\t{y}\t0\t0\t1\t1\n" for x, y in SPOTS)
    with pytest.raises(ValueError, match=r"S1_selection\.tsv.*lacks column.*pixel_y"):
        read_her2st(make_root(tmp_path, selection=sel), "S1")
    lab = "Row.names\tx\ty\tlabel_text\n" + "".join(f"a\t{x}\t{y}\tinvasive cancer\n" for x, y in SPOTS)
    with pytest.raises(ValueError, match=r"S1_labeled_coordinates\.tsv.*lacks column.*label"):
        read_her2st(make_root(tmp_path / "b", labels=lab), "S1")


def test_spot_id_does_not_parse(tmp_path):
    text = counts_text().replace("6x11", "spot_6_11")
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*'spot_6_11'.*does not parse"):
        read_her2st(make_root(tmp_path, counts=text), "S1")


def test_coordinates_outside_image(tmp_path):
    # spots reach pixel (800, 1200); an 600 x 600 image cannot hold them
    with pytest.raises(ValueError, match=r"S1\.png.*outside the image"):
        read_her2st(make_root(tmp_path, image=(600, 600)), "S1")


def test_counts_and_labels_share_no_spot(tmp_path):
    lab = "Row.names\tx\ty\tpixel_x\tpixel_y\tlabel\n" + "".join(
        f"a\t{x + 20}\t{y + 20}\t1\t1\tinvasive cancer\n" for x, y in SPOTS)
    with pytest.raises(ValueError, match=r"S1_labeled_coordinates\.tsv.*no label row matches"):
        read_her2st(make_root(tmp_path, labels=lab), "S1")


def test_duplicate_spot_ids(tmp_path):
    text = counts_text(spots=SPOTS + [SPOTS[3]])
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*duplicate spot ids.*'8x10'"):
        read_her2st(make_root(tmp_path, counts=text), "S1")


@pytest.mark.parametrize("value,match", [(-1, "negative counts"), (1.5, "non-integer counts"),
                                         ("NA", "NaN/Inf counts"), ("abc", "non-numeric")])
def test_bad_count_values(tmp_path, value, match):
    text = counts_text(value=lambda i, j: value if (i, j) == (4, 2) else 1)
    with pytest.raises(ValueError, match=rf"S1\.tsv\.gz.*{match}"):
        read_her2st(make_root(tmp_path, counts=text), "S1")


def test_empty_slice(tmp_path):
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*(empty|no spots)"):
        read_her2st(make_root(tmp_path, counts=counts_text(spots=[])), "S1")
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*empty"):
        read_her2st(make_root(tmp_path / "b", counts=""), "S1")


def test_truncated_gzip(tmp_path):
    root = make_root(tmp_path)
    p = root / "counts" / "S1.tsv.gz"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*(corrupt|truncated)"):
        read_her2st(root, "S1")


def test_wrong_delimiter(tmp_path):
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*tab-separated"):
        read_her2st(make_root(tmp_path, counts=counts_text(sep=",")), "S1")
    sel = "x,y,new_x,new_y,pixel_x,pixel_y,selected\n" + "".join(f"{x},{y},0,0,1,1,1\n" for x, y in SPOTS)
    with pytest.raises(ValueError, match=r"S1_selection\.tsv.*single column.*tab-separated"):
        read_her2st(make_root(tmp_path / "b", selection=sel), "S1")


def test_duplicate_gene_names_summed(tmp_path):
    text = counts_text(genes=["ERBB2", "KRT19", "ERBB2", "PTPRC"])
    with pytest.warns(UserWarning, match=r"S1\.tsv\.gz.*duplicated gene name.*ERBB2"):
        a = read_her2st(make_root(tmp_path, counts=text), "S1")
    assert list(a.var_names) == ["ERBB2", "KRT19", "PTPRC"]
    expect = [(i + 0) % 5 + (i + 4) % 5 for i in range(len(SPOTS))]
    assert a[:, "ERBB2"].X.toarray().ravel().tolist() == expect


def test_label_rows_without_counts_reported(tmp_path):
    lab = "Row.names\tx\ty\tpixel_x\tpixel_y\tlabel\n" + "".join(
        f"a\t{x}\t{y}\t1\t1\tinvasive cancer\n" for x, y in SPOTS + [(30, 30), (31, 30)]) + "b\tNA\tNA\t1\t1\tundetermined\n"
    with pytest.warns(UserWarning) as rec:
        a = read_her2st(make_root(tmp_path, labels=lab), "S1")
    msgs = " | ".join(str(w.message) for w in rec)
    assert "2 label row(s) have no count row" in msgs and "1 label row(s) with NA coordinates" in msgs
    assert a.obs["annotation"].notna().sum() == 12


def test_spot_without_selection_row(tmp_path):
    sel = "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n" + "".join(
        f"{x}\t{y}\t0\t0\t{100 * x}\t{100 * y}\t1\n" for x, y in SPOTS[1:])
    with pytest.raises(ValueError, match=r"S1\.tsv\.gz.*no row in.*S1_selection\.tsv.*'5x10'"):
        read_her2st(make_root(tmp_path, selection=sel), "S1")


def test_unknown_label_names_file(tmp_path):
    lab = "Row.names\tx\ty\tpixel_x\tpixel_y\tlabel\n" + "".join(f"a\t{x}\t{y}\t1\t1\tnecrosis\n" for x, y in SPOTS)
    with pytest.raises(ValueError, match=r"S1_labeled_coordinates\.tsv.*necrosis"):
        read_her2st(make_root(tmp_path, labels=lab), "S1")
    a = read_her2st(make_root(tmp_path / "b", labels=lab), "S1",
                    label_schema={"cancer": ["tumour"], "non_cancer": None, "unknown": "error"})
    assert (a.obs["cancer"] == 0).all()
