"""The search space: primitives, edge layout, and the paper's random sampler."""

import collections

import jax
import numpy as np
import pytest

import jnas
from jnas import space


def test_primitives_in_darts_order():
  # quark0/darts cnn/genotypes.py PRIMITIVES
  assert space.PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def test_edges_follow_quark0_alpha_rows():
  edges = space.edges(4)
  assert len(edges) == space.num_edges(4) == 14 == 2 + 3 + 4 + 5
  assert edges[:2] == ((0, 0), (1, 0))
  assert edges[2:5] == ((0, 1), (1, 1), (2, 1))
  assert edges[-1] == (4, 3)  # node 3 reads states 0..4
  for row, (src, node) in enumerate(edges):
    assert space.edge_index(src, node) == row
  assert space.num_edges(6) == 27  # CNAS: 6 intermediate nodes
  with pytest.raises(ValueError, match="no input 3"):
    space.edge_index(3, 1)


def test_reduction_edges_and_layers():
  assert [space.is_reduction_edge(s) for s in range(4)] == [True, True, False, False]
  assert space.reduction_layers(20) == (6, 13)
  assert space.reduction_layers(8) == (2, 5)


@pytest.fixture(scope="module")
def draws():
  return jnas.random_genotypes(jax.random.key(0), 600)


def test_sampler_never_draws_none_and_inputs_are_distinct(draws):
  for g in draws:
    assert "none" not in g.ops()
    for cell in (g.normal, g.reduce):
      for j in range(4):
        a, b = cell[2 * j][1], cell[2 * j + 1][1]
        assert a != b and 0 <= a < j + 2 and 0 <= b < j + 2
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


def test_sampler_ops_and_inputs_near_uniform(draws):
  ops = collections.Counter(op for g in draws for op, _ in g.normal + g.reduce)
  n = sum(ops.values())  # 600 draws * 16 ops
  assert set(ops) == set(space.PRIMITIVES[1:])
  for count in ops.values():  # each op 1/7; binomial sd ~ sqrt(n/7) ~ 35
    assert abs(count - n / 7) < 5 * np.sqrt(n / 7)
  # node 3 chooses 2 of its 5 inputs: each input appears with probability 2/5
  inputs = collections.Counter(i for g in draws for _, i in g.normal[6:8])
  for i in range(5):
    assert abs(inputs[i] / len(draws) - 0.4) < 0.08


def test_sampler_is_deterministic_and_cells_independent(draws):
  assert jnas.random_genotype(jax.random.key(7)) == jnas.random_genotype(jax.random.key(7))
  assert jnas.random_genotype(jax.random.key(7)) != jnas.random_genotype(jax.random.key(8))
  same = sum(g.normal == g.reduce for g in draws)
  assert same == 0


def test_skip_connect_cap():
  gs = jnas.random_genotypes(jax.random.key(1), 200, max_skip_connect=2)
  counts = [sum(op == "skip_connect" for op, _ in g.normal) for g in gs]
  assert max(counts) <= 2
  assert min(counts) == 0 and 2 in counts
  zero = jnas.random_genotype(jax.random.key(2), max_skip_connect=0)
  assert all(op != "skip_connect" for op, _ in zero.normal)


def test_sampler_other_op_set():
  g = jnas.random_genotype(jax.random.key(3), primitives=space.MACRO_MICRO_PRIMITIVES)
  assert g.ops() <= set(space.MACRO_MICRO_PRIMITIVES) - {"none"}
