"""ArcNetwork (jnas.arc_network): many genotypes through one program, checked against jnas.Network.

The independent fact: with the weights ``to_network_variables`` extracts, the discrete Network of
the genotype computes the same logits, auxiliary logits, BN statistics and gradients, for a
genotype whose cells concatenate only some of their nodes (the masked blocks) and whose
reduction cell reads both cell inputs and nodes (both strides). Tiny sizes: C 4, 3 cells, 3
nodes, 4 ops, 32-px images (the auxiliary head needs its 8-px map).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import data as D
from jnas import train as T
from jnas.arc_network import ArcNetwork, check_genotype, encode
from jnas.genotype import Genotype
from jnas.network import count_params
from jnas.protocols import Protocol

OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
# normal: concat only nodes 3 and 4 (node 2 feeds node 3 only); reduce: nodes reading inputs (stride 2)
# and nodes (stride 1), concat 2 and 4
G1 = Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0),
                      ("skip_connect", 3), ("sep_conv_3x3", 1)], normal_concat=[3, 4],
              reduce=[("skip_connect", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 2), ("skip_connect", 1),
                      ("dil_conv_3x3", 3), ("skip_connect", 2)], reduce_concat=[2, 4])
G2 = Genotype(normal=[("max_pool_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_3x3", 2),
                      ("dil_conv_3x3", 1), ("skip_connect", 3)], normal_concat=[2, 3, 4],
              reduce=[("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 2), ("skip_connect", 0),
                      ("max_pool_3x3", 3), ("sep_conv_3x3", 3)], reduce_concat=[4])


def _ce(logits, y):
  return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])


@pytest.fixture(scope="module")
def compiled(fast_compile):
  net = ArcNetwork(OPS, n_nodes=3, C=4, layers=3, num_classes=5, auxiliary=True)
  x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  y = jnp.array([0, 3, 4, 1, 2, 0])

  def loss_arc(p, s, arc, key):
    logits, aux, new = net.forward(p, s, x, arc, train=True, key=key, drop_path_prob=0.3)
    return _ce(logits, y) + 0.4 * _ce(aux, y), (logits, aux, new)

  arc_step = jax.jit(jax.value_and_grad(loss_arc, has_aux=True))
  arc_eval = jax.jit(lambda p, s, arc: net.forward(p, s, x, arc, train=False)[0])
  arc_init = jax.jit(net.init_variables)
  return net, x, y, arc_step, arc_eval, arc_init


def test_forward_and_gradient_equal_the_discrete_network(compiled):
  net, x, y, arc_step, arc_eval, arc_init = compiled
  arc = net.encode(G1)
  v = arc_init(jax.random.key(0), arc)
  key = jax.random.key(7)
  (_, (logits, aux, new)), grads = arc_step(v["params"], v["batch_stats"], arc, key)

  dnet = net.network(G1)
  dv = net.to_network_variables(v, G1)
  ref = dnet.init_variables(jax.random.key(0))
  assert jax.tree.structure(dv) == jax.tree.structure(ref)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, dv, ref)))
  assert count_params(dv) == count_params(ref)

  def loss_net(p):
    lg, ax, nw = dnet.forward(p, dv["batch_stats"], x, train=True, key=key, drop_path_prob=0.3)
    return _ce(lg, y) + 0.4 * _ce(ax, y), (lg, ax, nw)

  (_, (lg, ax, nw)), g_net = jax.value_and_grad(loss_net, has_aux=True)(dv["params"])
  np.testing.assert_allclose(logits, lg, atol=2e-5)
  np.testing.assert_allclose(aux, ax, atol=2e-5)
  mapped = net.to_network_variables({"params": grads, "batch_stats": new}, G1)
  for a, b in zip(jax.tree.leaves(mapped["batch_stats"]), jax.tree.leaves(nw)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  for a, b in zip(jax.tree.leaves(mapped["params"]), jax.tree.leaves(g_net)):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()) + 1e-7, rtol=1e-3)

  # eval mode (running statistics) equal too
  ev = net.to_network_variables({"params": v["params"], "batch_stats": new}, G1)
  np.testing.assert_allclose(arc_eval(v["params"], new, arc),
                             dnet.forward(ev["params"], ev["batch_stats"], x, train=False)[0], atol=2e-5)

  # weights of ops the genotype does not choose, and the rows of unconcatenated nodes, get no gradient
  cell0 = jax.tree.map(lambda a: a[0], grads["cells_00"])
  for leaf in ("dil_conv_3x3_s1", "sep_conv_3x3_s1"):
    chosen = {2 * j + k for j, node in enumerate(G1.nodes(False)) for k, (_, (op, _)) in enumerate(node)
              if f"{op}_s1" == leaf}
    for t in set(range(6)) - chosen:
      assert all(float(jnp.abs(a[t]).max()) == 0.0 for a in jax.tree.leaves(cell0["ops"][leaf])), (leaf, t)
  pre1 = jax.tree.map(lambda a: a[0], grads["cells_01"])["pre1"]["w"]  # reads cell 0: node 2 (rows 0..3) unused
  assert float(jnp.abs(pre1[:4]).max()) == 0.0 and float(jnp.abs(pre1[4:]).max()) > 0.0


def test_one_program_serves_other_genotypes(compiled):
  net, x, y, arc_step, arc_eval, arc_init = compiled
  arc = net.encode(G2)
  v = arc_init(jax.random.key(0), arc)
  (_, (logits, _, new)), _ = arc_step(v["params"], v["batch_stats"], arc, jax.random.key(7))
  assert arc_step._cache_size() == 1 and arc_init._cache_size() == 1
  dv = net.to_network_variables(v, G2)
  lg = net.network(G2).forward(dv["params"], dv["batch_stats"], x, train=True, key=jax.random.key(7),
                               drop_path_prob=0.3)[0]
  np.testing.assert_allclose(logits, lg, atol=2e-5)


def test_init_bounds_are_the_genotypes_own_fan_in(compiled):
  """The layer reading a cell output draws U(+-1/sqrt(fan_in)) at the genotype's own width."""
  net, _, _, _, _, arc_init = compiled
  v = arc_init(jax.random.key(0), net.encode(G1))
  w = net.to_network_variables(v, G1)["params"]
  C = 4
  pre1 = w["cells_01"]["pre1"]["w"][0]  # reads normal cell 0: 2 concatenated nodes of C
  assert pre1.shape == (2 * C, 2 * C)
  bound = 1 / np.sqrt(2 * C)
  assert bound * 0.8 < float(jnp.abs(pre1).max()) <= bound
  cls = w["classifier"]["w"]  # reads reduce cell 2: 1 of... 2 concatenated nodes of 4C
  bound = 1 / np.sqrt(2 * 4 * C)
  assert cls.shape[0] == 2 * 4 * C and bound * 0.8 < float(jnp.abs(cls).max()) <= bound


def test_bad_genotypes_are_named():
  with pytest.raises(ValueError, match="outside the shared program's ops"):
    encode(G1, OPS[:2], 3)
  with pytest.raises(ValueError, match="3 nodes of 2 ops"):
    check_genotype(Genotype(normal=G1.normal[:4], normal_concat=[2, 3], reduce=G1.reduce[:4], reduce_concat=[2, 3]),
                   OPS, 3)
  with pytest.raises(ValueError, match="distinct intermediate nodes"):
    encode(Genotype(G1.normal, [1, 4], G1.reduce, [2]), OPS, 3)
  with pytest.raises(ValueError, match="unknown op"):
    ArcNetwork(("sep_conv_3x3", "conv_99x99"))


def test_train_genotypes_share_program_one_compile_and_independent_members(fast_compile, tmp_path):
  ds = D.load_digits(channels=3)
  proto = Protocol(name="t", epochs=1, C=4, layers=2, batch_size=32, lr=0.025, cutout_length=0, drop_path_prob=0.0,
                   auxiliary_weight=0.0, train_images=128, test_images=64)
  before = T.shared_programs.cache_info().misses
  both = T.train_genotypes([G1, G2], [0], proto, ds.train, ds.test, num_classes=10, quiet=True, share_program=OPS,
                           out=str(tmp_path / "run"))
  alone = T.train_genotypes([G2], [0], proto, ds.train, ds.test, num_classes=10, quiet=True, share_program=OPS)
  assert T.shared_programs.cache_info().misses == before + 1  # one program for both calls
  net = proto.arc_network(OPS, 3, 10)
  for r, g in zip(both, (G1, G2)):
    assert r["status"] == "ok" and np.isfinite(r["final_acc"])
    assert r["params"] == count_params(net.network(g).init_variables(jax.random.key(0)))
  assert both[0]["params"] != both[1]["params"]
  # a genotype's numbers depend only on its seed, not on the other genotypes of the call
  assert alone[0]["train_loss"] == both[1]["train_loss"] and alone[0]["final_acc"] == both[1]["final_acc"]
  with pytest.raises(ValueError, match=r"share_program: genotypes\[0\].*outside"):
    T.train_genotypes([G1], [0], proto, ds.train, ds.test, num_classes=10, quiet=True, share_program=OPS[:1])
