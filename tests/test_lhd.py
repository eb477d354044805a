"""The LHD space's genotypes and discretisation policies (host side) against cells worked out by
hand [LHD ``eval/gen_trans.py``]."""

import numpy as np
import pytest

from jnas import lhd

P = {op: k for k, op in enumerate(lhd.PRIMITIVES)}


def _weights():
  """Per node its strongest (input, op) pairs, everything else 0.001; rows node by node."""
  w = np.full((20, 7), 0.001)
  lo = [r[0] for r in lhd.node_rows()]
  picks = {  # node: [(input state, op, p), ...] strongest first
      0: [(1, "sep_conv_3x3", 0.5), (1, "skip_connect", 0.3), (0, "avg_pool_3x3", 0.1)],
      1: [(2, "dil_conv_3x3", 0.6), (0, "max_pool_3x3", 0.2), (1, "sep_conv_5x5", 0.1)],
      2: [(2, "sep_conv_5x5", 0.5), (1, "avg_pool_3x3", 0.3), (3, "max_pool_3x3", 0.1)],
      3: [(0, "skip_connect", 0.4), (4, "dil_conv_5x5", 0.35), (1, "sep_conv_3x3", 0.1)],
      4: [(5, "sep_conv_3x3", 0.45), (2, "max_pool_3x3", 0.25), (0, "dil_conv_3x3", 0.1)],
  }
  for node, entries in picks.items():
    for i, op, p in entries:
      w[lo[node] + i, P[op]] = p
  out = np.array([[0.05, 0.1, 0.25, 0.3, 0.3],   # sum path (softmax): > 0.2 -> nodes 3, 4, 2
                  [0.9, 0.2, 0.3, 0.4, 0.5]])    # concat gates (sigmoid): > mean 0.46 -> nodes 0, 4
  return {"normal": w, "normal_output": out, "reduce": w, "reduce_output": out}


def test_base_policy_by_hand():
  g = lhd.discretize(_weights(), "base")
  assert g.normal_output == {"sum": (3, 4, 2), "concat": (0, 4)}
  # node 1 (state 3) feeds no output: nobody reads state 3 among the top-2 pairs, so its pairs go
  assert g.normal == (("sep_conv_3x3", 1, 0), ("skip_connect", 1, 0),
                      ("sep_conv_5x5", 2, 2), ("avg_pool_3x3", 1, 2),
                      ("skip_connect", 0, 3), ("dil_conv_5x5", 4, 3),
                      ("sep_conv_3x3", 5, 4), ("max_pool_3x3", 2, 4))
  assert g.reduce == g.normal and lhd.discretize(_weights(), "1m") == g


def test_three_ops_and_four_outputs_by_hand():
  g3 = lhd.discretize(_weights(), "3ops")
  # three pairs per node; node 2's third pair reads state 3, so node 1 reaches an output now
  assert [n for _, _, n in g3.normal] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
  assert ("max_pool_3x3", 3, 2) in g3.normal and ("sep_conv_5x5", 1, 1) in g3.normal
  g4 = lhd.discretize(_weights(), "4out")
  assert g4.normal_output == {"sum": (3, 4, 2, 1), "concat": (0, 4, 3, 2)}
  assert len(g4.normal) == 10  # every node is an output: all top-2 pairs stay


def test_cumulative_threshold_and_round_trips():
  order, keep = lhd._quantile([0.5, 0.3, 0.15, 0.05], 0.7)
  assert keep == 2 and order[:2].tolist() == [0, 1]  # 0.5 + 0.3 > 0.7
  assert lhd._quantile([0.5, 0.3, 0.15, 0.05], 3)[1] == 3 and lhd._quantile([0.5, 0.3, 0.1], 0, 0.2)[1] == 2
  g = lhd.discretize(_weights(), "3ops")
  assert lhd.LHDGenotype.parse(str(g)) == g and lhd.LHDGenotype.from_json(g.to_json()) == g
  with pytest.raises(ValueError, match="unknown op"):
    lhd.LHDGenotype(normal=[("conv_9x9", 0, 0)], normal_output={"sum": [0]}, reduce=[], reduce_output={"sum": [0]})
  with pytest.raises(ValueError, match="reads states"):
    lhd.LHDGenotype(normal=[("skip_connect", 3, 0)], normal_output={"sum": [0]}, reduce=[], reduce_output={"sum": [0]})
  with pytest.raises(ValueError, match="unknown LHD policy"):
    lhd.discretize(_weights(), "5out")
  with pytest.raises(ValueError, match="shape"):
    lhd.discretize({**_weights(), "normal": np.zeros((14, 7))})
