"""Genotypes: DARTS/pt.darts text, JSON, hashing, validation and derivation from alphas."""

import json

import numpy as np
import pytest

import jnas
from jnas import genotypes
from jnas.genotype import Genotype, derive_genotype, from_ptdarts, parse

# Exactly as quark0/darts prints DARTS_V2 (cnn/genotypes.py; namedtuple repr).
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])")


def test_darts_v2_prints_as_quark0():
  assert str(genotypes.DARTS_V2) == DARTS_V2_TEXT
  assert genotypes.DARTS is genotypes.DARTS_V2
  assert jnas.genotypes.get("DARTS_V2") == parse(DARTS_V2_TEXT)


@pytest.mark.parametrize("name", sorted(genotypes.PUBLISHED))
def test_text_and_json_round_trip(name):
  g = genotypes.PUBLISHED[name]
  text = str(g)
  assert str(parse(text)) == text
  assert parse(text) == g
  assert parse(g.to_ptdarts_str()) == g
  assert Genotype.from_json(g.to_json()) == g
  assert Genotype.from_json(g.to_json()).hash() == g.hash()


def test_range_concat_prints_as_range():
  text = str(genotypes.PDARTS)
  assert "normal_concat=range(2, 6)" in text and "reduce_concat=range(2, 6)" in text
  # the pt.darts nested form
  nested = ("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
            "[('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0), ('dil_conv_3x3', 2)]], "
            "normal_concat=range(2, 6), reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('skip_connect', 2), "
            "('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 2), ('max_pool_3x3', 1)]], "
            "reduce_concat=range(2, 6))")
  assert parse(nested) == genotypes.DARTS_V2
  assert genotypes.DARTS_V2.to_ptdarts_str() == nested


def test_from_ptdarts_lists():
  g = from_ptdarts([[("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]] * 4, [[("max_pool_3x3", 0), ("max_pool_3x3", 1)]] * 4)
  assert g.steps == 4 and g.normal[7] == ("sep_conv_3x3", 1)


def test_hash_is_stable_and_content_based():
  g = genotypes.DARTS_V2
  restyled = Genotype(g.normal, g.normal_concat, g.reduce, g.reduce_concat, concat_style="range")
  assert restyled == g and restyled.hash() == g.hash() and hash(restyled) == hash(g)
  assert len({x.hash() for x in genotypes.PUBLISHED.values()}) == len(set(genotypes.PUBLISHED.values()))
  assert json.loads(g.to_json())["version"] == 1


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[('sep_conv_3x3', 0)", "syntax error"),
    ("Foo(normal=[])", "expected 'Genotype"),
    (DARTS_V2_TEXT.replace("'sep_conv_3x3', 0", "'sep_conv_9x9', 0", 1), "unknown op 'sep_conv_9x9'"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "node 3 reads input 5, out of range 0..4"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)]", "]", 1), "2 \\(op, input\\) pairs per node, got 7"),
    (DARTS_V2_TEXT.replace("normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ",
                           "normal=[[], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ", 1)
     .replace("('dil_conv_3x3', 2)]", "('dil_conv_3x3', 2)]]", 1), "node 0 has no inputs"),
    (DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4, 9]"), "normal_concat has 9"),
    (DARTS_V2_TEXT.replace(", reduce_concat=[2, 3, 4, 5]", ""), "missing field"),
    (DARTS_V2_TEXT.replace("normal_concat=", "normal_kat="), "unknown field 'normal_kat'"),
    ("Genotype(normal=__import__('os'), normal_concat=[2], reduce=[], reduce_concat=[2])", "not a literal"),
])
def test_malformed_text_raises_value_error_naming_problem(text, message):
  with pytest.raises(ValueError, match=message):
    parse(text)


def test_bad_json():
  with pytest.raises(ValueError, match="malformed genotype JSON"):
    Genotype.from_json("{not json")
  with pytest.raises(ValueError, match="version 7"):
    Genotype.from_json(json.dumps({**genotypes.DARTS_V2.to_dict(), "version": 7}))


def _alphas(normal_rows, reduce_rows=None):
  a = {"normal": np.zeros((14, 8)), "reduce": np.zeros((14, 8))}
  for row, col, v in normal_rows:
    a["normal"][row, col] = v
  for row, col, v in reduce_rows or ():
    a["reduce"][row, col] = v
  return a


def test_derive_zero_alphas_ties_to_lowest_index():
  g = derive_genotype(_alphas([]))
  # every op ties: lowest non-none op (max_pool_3x3), inputs 0 and 1, in that order
  assert g.normal == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
  assert g.normal_concat == (2, 3, 4, 5) and "range(2, 6)" in str(g)


def test_derive_hand_made_alphas_darts_vs_ptdarts():
  # Node 1 reads rows 2, 3, 4 (inputs 0, 1, 2).
  #   row 2: none=10, sep_conv_3x3=5 -> softmax(sep3) = e^5 / (e^10 + e^5 + 6) ~ 0.0067; raw 5
  #   row 3: sep_conv_5x5=1          -> softmax = e / (e + 7) ~ 0.280;                      raw 1
  #   row 4: avg_pool_3x3=0.5        -> softmax = e^.5 / (e^.5 + 7) ~ 0.191;                 raw 0.5
  # DARTS (softmax) keeps inputs 1 then 2; pt.darts (raw) keeps inputs 0 then 1.
  rows = [(2, 0, 10.0), (2, 4, 5.0), (3, 5, 1.0), (4, 2, 0.5),
          (1, 4, 3.0), (0, 7, 2.0)]  # node 0: input 1 sep3 (stronger) then input 0 dil5
  darts = derive_genotype(_alphas(rows))
  assert darts.normal[:2] == (("sep_conv_3x3", 1), ("dil_conv_5x5", 0))
  assert darts.normal[2:4] == (("sep_conv_5x5", 1), ("avg_pool_3x3", 2))
  pt = derive_genotype(_alphas(rows), rule="ptdarts")
  assert pt.normal[2:4] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 1))


def test_derive_never_picks_none_and_checks_shapes():
  a = _alphas([(r, 0, 50.0) for r in range(14)])
  assert "none" not in derive_genotype(a).ops()
  with pytest.raises(ValueError, match="expected \\(edges, 8\\)"):
    derive_genotype({"normal": np.zeros((14, 7)), "reduce": np.zeros((14, 8))})
  with pytest.raises(ValueError, match="not a cell's edge count"):
    derive_genotype({"normal": np.zeros((13, 8)), "reduce": np.zeros((13, 8))})
  with pytest.raises(ValueError, match="NaN"):
    derive_genotype({"normal": np.full((14, 8), np.nan), "reduce": np.zeros((14, 8))})
  with pytest.raises(ValueError, match="unknown derivation rule"):
    derive_genotype(_alphas([]), rule="nope")


def test_derive_six_nodes():
  g = derive_genotype({"normal": np.zeros((27, 8)), "reduce": np.zeros((27, 8))})
  assert g.steps == 6 and g.normal_concat == tuple(range(2, 8))
