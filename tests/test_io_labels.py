"""Label schema: free text -> label_class and cancer (1 / 0 / NA)."""
from __future__ import annotations

import pandas as pd
import pytest

from spagraph.io.labels import HER2ST, LabelSchema


def _apply(schema, labels, src="slide.tsv"):
    cls, canc = schema.apply(pd.Series(labels, dtype=object), src)
    return list(cls), canc.tolist()


def test_default_her2st_schema_case_and_space_insensitive():
    cls, canc = _apply(HER2ST, ["Invasive cancer", "  cancer  in situ", "CONNECTIVE TISSUE", "adipose_tissue",
                                "breast glands", "immune infiltrate", "undetermined", None])
    assert canc == [1, 1, 0, 0, 0, 0, pd.NA, pd.NA]
    assert cls[:3] == ["invasive cancer", "cancer in situ", "connective tissue"]
    assert pd.isna(cls[-1])


def test_unknown_label_error_names_file_and_label():
    with pytest.raises(ValueError, match=r"A1_labeled_coordinates\.tsv.*'necrosis'"):
        _apply(HER2ST, ["invasive cancer", "necrosis"], "labels/A1_labeled_coordinates.tsv")


def test_unknown_label_na_or_non_cancer_with_warning():
    na = LabelSchema.from_dict({"cancer": ["tumor"], "non_cancer": ["normal"], "unknown": "na"})
    with pytest.warns(UserWarning, match="necrosis.*NA"):
        _, canc = _apply(na, ["Tumor", "normal", "necrosis"])
    assert canc == [1, 0, pd.NA]
    zero = LabelSchema.from_dict({"cancer": ["tumor"], "non_cancer": ["normal"], "unknown": "non_cancer"})
    with pytest.warns(UserWarning):
        assert _apply(zero, ["necrosis"])[1] == [0]


def test_non_cancer_null_means_every_other_label():
    s = LabelSchema.from_dict({"cancer": ["tumour"], "undetermined": ["?"], "non_cancer": None})
    assert _apply(s, ["tumour", "anything", "?"])[1] == [1, 0, pd.NA]


def test_card_label_mapping_round_trip():
    import yaml
    from spagraph.io.cards import CARDS_DIR
    card = yaml.safe_load((CARDS_DIR / "her2st.yaml").read_text())
    s = LabelSchema.from_dict(card["label_mapping"])
    assert _apply(s, ["invasive cancer", "breast glands", "undetermined"])[1] == [1, 0, pd.NA]


@pytest.mark.parametrize("bad,match", [
    ({"tumour": ["x"]}, "unknown keys"),
    ({"unknown": "drop"}, "must be one of"),
    ({"cancer": "invasive cancer"}, "list of label texts"),
    ({"cancer": ["a"], "non_cancer": ["A "]}, "both cancer and non_cancer"),
])
def test_bad_mappings(bad, match):
    with pytest.raises(ValueError, match=match):
        LabelSchema.from_dict(bad)
