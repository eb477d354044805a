"""jnas.packed: K genotypes in one program equal K Network programs (forward, gradients, layout).

One module-scoped fixture compiles the packed forward/backward once and each genotype's Network
once (3 cells: a normal cell and two reductions, C=4, 32-px images so the auxiliary head runs), and
every test reads from it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnas
from jnas import genotypes
from jnas.genotype import Genotype
from jnas.network import Network
from jnas.packed import PackedNetwork, group_by_shape, shape_key
from jnas.train import cross_entropy

_POOLS = ("Genotype(normal=[('max_pool_3x3', 0), ('avg_pool_3x3', 1), ('skip_connect', 0), ('max_pool_3x3', 2), "
          "('avg_pool_3x3', 2), ('skip_connect', 1), ('max_pool_3x3', 3), ('skip_connect', 4)], normal_concat=[2, 3, 4, 5], "
          "reduce=[('skip_connect', 0), ('skip_connect', 1), ('avg_pool_3x3', 0), ('max_pool_3x3', 2), "
          "('skip_connect', 2), ('none', 3), ('avg_pool_3x3', 1), ('skip_connect', 4)], reduce_concat=[2, 3, 4, 5])")
# In-degrees other than 2 (as SNAS derives them): nodes combine by a per-genotype segment sum. Its
# reduction cell has sep/dil convs from the cell inputs (stride 2), the pooling genotype's has the
# stride-2 skip (FactorizedReduce) and 'none'; DARTS_V2 adds max pools and dilated convs.
_DEGREES = Genotype(
    normal=(("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 2),
            ("dil_conv_5x5", 3), ("skip_connect", 1), ("sep_conv_3x3", 4), ("max_pool_3x3", 0)),
    normal_concat=(2, 3, 4, 5), normal_degree=(1, 3, 2, 2),
    reduce=(("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_3x3", 2), ("skip_connect", 0),
            ("sep_conv_5x5", 3), ("avg_pool_3x3", 1), ("skip_connect", 4), ("dil_conv_5x5", 2)),
    reduce_concat=(2, 3, 4, 5))
GENOTYPES = [genotypes.DARTS_V2, Genotype.parse(_POOLS), _DEGREES]
KW = dict(C=4, layers=3, num_classes=5, auxiliary=True)
P_DROP = 0.3


def _loss(logits, aux, y):
  return cross_entropy(logits, y) + 0.4 * cross_entropy(aux, y)


@pytest.fixture(scope="module")
def pack(fast_compile):
  net = PackedNetwork(GENOTYPES, **KW)
  key = jax.random.key(0)
  variables = net.init_variables(key)
  x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (6,), 0, 5)
  dp = jax.random.key(7)

  def run(forward, params, stats):
    """Train mode with and without drop path, eval mode, and the gradient of the training loss."""
    def train_loss(p):
      lo, aux, st = forward(p, stats, x, train=True, key=dp, drop_path_prob=P_DROP)
      losses = jax.vmap(_loss, (0, 0, None))(lo, aux, y) if lo.ndim == 3 else _loss(lo, aux, y)
      return jnp.sum(losses), (lo, aux, st)
    (_, drop), grads = jax.value_and_grad(train_loss, has_aux=True)(params)
    plain = forward(params, stats, x, train=True)
    evaluated = forward(params, stats, x, train=False)
    return {"drop": drop, "plain": plain, "eval": evaluated[0], "grads": grads}

  packed = jax.jit(lambda p, s: run(net.forward, p, s))(variables["params"], variables["batch_stats"])
  alone = []
  for k, n in enumerate(net.networks):
    v = n.init_variables(key)
    alone.append((v, jax.jit(lambda p, s, n=n: run(n.forward, p, s))(v["params"], v["batch_stats"])))
  return net, variables, packed, alone


def _close(a, b, tol=2e-5):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
  for u, v in zip(la, lb):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def test_init_and_layout_match_network(pack):
  net, variables, _, alone = pack
  for k, (v, _) in enumerate(alone):
    u = net.unpack(variables, k)
    assert jax.tree.structure(u) == jax.tree.structure(v)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)):
      np.testing.assert_array_equal(a, b)  # genotype k starts where Network(g_k) starts with the same key
    assert jnas.count_params(u) == jnas.count_params(v) == jnas.count_params(
        Network(GENOTYPES[k], **KW).init_variables(jax.random.key(3)))
  repacked = net.pack([net.unpack(variables, k) for k in range(net.K)])
  assert jax.tree.structure(repacked) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(repacked), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  # every op instance is stored once: the pack holds exactly the K networks' parameters
  assert jnas.count_params(variables, exclude=()) == sum(jnas.count_params(v, exclude=()) for v, _ in alone)


def test_forward_equals_each_network(pack):
  net, _, packed, alone = pack
  for k, (_, ref) in enumerate(alone):
    for mode in ("drop", "plain"):
      lo, aux, st = packed[mode]
      rlo, raux, rst = ref[mode]
      _close(lo[k], rlo)
      _close(aux[k], raux)
      _close(net.unpack(st, k), rst)
    _close(packed["eval"][k], ref["eval"])
  # drop path is on and draws genotype k's masks from the key as Network does (else this cannot fail)
  assert not np.allclose(packed["drop"][0], packed["plain"][0], atol=1e-3)


def test_gradients_equal_each_network(pack):
  # float32 through BN over a batch of 6 at 2x2 px: each leaf to 1% of its own scale (a wrong mapping is off by 100%)
  net, _, packed, alone = pack
  for k, (_, ref) in enumerate(alone):
    got = net.unpack(packed["grads"], k)
    assert jax.tree.structure(got) == jax.tree.structure(ref["grads"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref["grads"])):
      scale = float(np.max(np.abs(b)))
      assert scale > 0 and float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= 1e-2 * scale


def test_per_genotype_clip_finite_and_select(pack):
  net, variables, packed, alone = pack
  grads = packed["grads"]
  norms = np.asarray(net.global_norms(grads))
  own = [net.unpack(grads, k) for k in range(net.K)]  # each genotype's own gradient, as Network lays it out
  np.testing.assert_allclose(norms, [float(optax.tree.norm(g)) for g in own], rtol=1e-5)
  np.testing.assert_allclose(norms, [float(optax.tree.norm(ref["grads"])) for _, ref in alone], rtol=1e-2)
  c = float(np.median(norms))  # some genotypes are clipped, some are not
  clipped = net.clip_by_global_norm(grads, c)
  for k in range(net.K):
    want, _ = optax.clip_by_global_norm(c).update(own[k], optax.EmptyState())
    _close(net.unpack(clipped, k), want, tol=1e-6)
  # a NaN in genotype 2's parameters only: finite and select see it for genotype 2 alone
  params = variables["params"]
  bad = net.pack([jax.tree.map(lambda a: a * jnp.nan, v["params"]) if k == 2 else v["params"]
                  for k, (v, _) in enumerate(alone)])
  assert np.asarray(net.finite(params)).tolist() == [True] * 3
  assert np.asarray(net.finite(bad)).tolist() == [True, True, False]
  opt = optax.sgd(0.1, momentum=0.9).init(bad)  # an optax state holds the layout too (its count is shared)
  assert np.asarray(net.finite(opt, bad)).tolist() == [True, True, False]
  kept = net.select(jnp.asarray([True, False, False]), bad, params)
  for k, expect in enumerate([bad, params, params]):
    _close(net.unpack(kept, k), net.unpack(expect, k), tol=0)


def test_shapes_and_packs():
  other = Genotype(normal=genotypes.DARTS_V2.normal, normal_concat=(2, 3, 5), reduce=genotypes.DARTS_V2.reduce,
                   reduce_concat=(2, 3, 4, 5))
  assert shape_key(other) != shape_key(genotypes.DARTS_V2)
  gs = [genotypes.DARTS_V2, other, genotypes.DARTS_V1, genotypes.DARTS_V2, other]
  assert group_by_shape(gs, 2) == [[0, 2], [1, 4], [3]]
  assert group_by_shape(gs, 1) == [[i] for i in range(5)]
  with pytest.raises(ValueError, match="cannot share a pack"):
    PackedNetwork([genotypes.DARTS_V2, other], C=4, layers=3)
  with pytest.raises(ValueError, match="pack_size"):
    group_by_shape(gs, 0)
  net = PackedNetwork(GENOTYPES[:2], **KW)
  with pytest.raises(ValueError, match="outside"):
    net.unpack({}, 2)
  with pytest.raises(ValueError, match="2 trees"):
    net.pack([{}])
  with pytest.raises(ValueError, match="NHWC"):
    net.forward({}, {}, jnp.zeros((2, 32, 32)), train=False)
