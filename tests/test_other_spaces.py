"""The ENAS, NAO and NSGA-Net spaces (``jnas.cellspace``, ``jnas.space_network``), their protocols and
their searches end to end on tiny digits."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import cellspace as cs
from jnas import data as D
from jnas import optim, space_ops
from jnas.network import count_params
from jnas.protocols import get_protocol
from jnas.space_network import SpaceCell, SpaceNetwork


def _draws(space, sampler, n, **kw):
  return cs.samples(jax.random.key(0), space, n, sampler, **kw)


def test_enas_nb_sampler_shares_one_input_pair():
  gs = _draws("enas", "nb", 120)
  pairs = collections.Counter()
  ops = collections.Counter()
  for g in gs:
    links = {(n[0][1], n[1][1]) for cell in (g.normal, g.reduce) for n in cell}
    assert len(links) == 1 and links <= {(0, 0), (0, 1), (1, 0), (1, 1)}  # one pair for every node
    pairs.update(links)
    assert set(range(2, 7)) <= set(g.normal_concat)  # no node reads a node: all are concatenated
    ops.update(op for cell in (g.normal, g.reduce) for n in cell for op, _ in n)
  assert set(pairs) == {(0, 0), (0, 1), (1, 0), (1, 1)}
  assert set(ops) == set(space_ops.ENAS_OPS) and max(ops.values()) < 1.35 * min(ops.values())


def test_nao_and_nsganet_samplers():
  nao = _draws("nao", "nb", 80)
  ids = {cs.get_space("nao").op_index(op) for g in nao for c in (g.normal, g.reduce) for n in c for op, _ in n}
  assert ids == set(range(11))  # NB's literal op ids 0-10
  large = _draws("nao", "nb", 40, nao_ids="large")
  assert {cs.get_space("nao").op_index(op) for g in large for n in g.normal for op, _ in n} <= set(range(5, 16))
  last = collections.Counter(i for g in nao for _, i in g.normal[4])  # node 4 reads 0..5 uniformly
  assert set(last) == set(range(6)) and min(last.values()) >= 10
  nsga = _draws("nsganet", "nb", 80)
  assert all(len(g.normal) == 4 and len(g.reduce) == 4 for g in nsga)
  assert all(n[0][1] != n[1][1] for g in nsga for n in g.normal + g.reduce)  # distinct inputs
  used = {op for g in nsga for n in g.normal + g.reduce for op, _ in n}
  assert used == set(cs.NSGA_OPS) - {"conv_7x1_1x7"}
  uni = _draws("nsganet", "uniform", 40)
  assert all(len(g.normal) == 5 for g in uni) and "conv_7x1_1x7" in {op for g in uni for n in g.normal for op, _ in n}
  assert any(n[0][1] == n[1][1] for g in uni for n in g.normal)  # repeats allowed in the search encoding


def test_genotype_forms_round_trip_and_errors():
  for space in ("enas", "nao", "nsganet"):
    for g in _draws(space, "uniform", 3):
      assert cs.genotype_from_text(str(g)) == g == cs.genotype_from_dict(g.to_dict())
      assert cs.genotype_from_text(g.to_json()) == g and cs.from_native(space, g.to_native()) == g
      assert cs.from_arc(space, g.to_arc()) == g
  upstream = "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1"
  g = cs.from_native("enas", upstream)
  assert g.normal[0] == (("avg_pool_3x3", 0), ("sep_conv_3x3", 0)) and g.to_native() == upstream
  vec = [3, 0, 2, 1] + [0] * 16 + [8, 1, 7, 0] + [0] * 16
  assert cs.from_native("nsganet", vec).normal[0] == (("sep_conv_3x3", 0), ("skip_connect", 1))
  assert cs.from_native("nsganet", vec).reduce[0] == (("conv_7x1_1x7", 1), ("sep_conv_7x7", 0))
  with pytest.raises(ValueError, match="unknown op 'dil_conv_3x3'"):
    cs.SpaceGenotype("enas", [[("dil_conv_3x3", 0), ("identity", 1)]], [[("identity", 0), ("identity", 1)]])
  with pytest.raises(ValueError, match="out of range 0..1"):
    cs.SpaceGenotype("nao", [[("identity", 2), ("identity", 1)]], [[("identity", 0), ("identity", 1)]])
  with pytest.raises(ValueError, match="4 integers per node"):
    cs.from_native("enas", "0 1 0")
  with pytest.raises(ValueError, match="unknown cell space"):
    cs.get_space("nasbench101")


# node 0 = id(s1) + id(s1); node 1 = id(node 0) + max(s1): state 0 unused, state 2 used
HAND = [[("identity", 1), ("identity", 1)], [("identity", 2), ("max_pool_3x3", 1)]]


def test_output_rules_on_a_hand_written_cell():
  nsga_hand = [[(("skip_connect" if o == "identity" else o), i) for o, i in n] for n in HAND]
  assert cs.SpaceGenotype("enas", HAND, HAND).normal_concat == (0, 3)  # unused states, inputs included
  assert cs.SpaceGenotype("nsganet", nsga_hand, nsga_hand).normal_concat == (3,)  # unused nodes only
  assert cs.SpaceGenotype("nsganet", nsga_hand, nsga_hand).to_darts(concat="all").normal_concat == (2, 3)
  # NAO's cell on calibrated inputs (no preprocessing at equal widths): concat(s0, node 1)
  g = cs.SpaceGenotype("nao", HAND, HAND)
  net = SpaceNetwork(g, C=4, layers=5)
  spec = SpaceCell(False, False, 4, 4, 4)
  params, stats = net._init_cell(spec, jax.random.key(0))
  s0, s1 = jax.random.normal(jax.random.key(1), (2, 2, 6, 6, 4))
  out, _ = net._cell(spec, params, stats, s0, s1, None, False, 0.0)
  pooled = space_ops.pool("max", 3, 1, pads="symmetric", count_include_pad=False).apply({}, {}, s1, False)[0]
  np.testing.assert_allclose(out, jnp.concatenate([s0, 2 * s1 + pooled], -1), rtol=1e-6, atol=1e-6)


def test_parameter_counts_by_hand():
  # NSGA-Net, C=4, 3 cells (reductions 1, 2); parameter-free ops but the FR of skip at stride 2:
  # stem 324 + 24; cell 0 pre0, pre1 12->4: 2 x 56; cell 1 pre0 12->8 112, pre1 4->8 48; cell 2 pre0 FR
  # 4->16 96, pre1 8->16 160; classifier 16 -> 10: 170. SE adds c + c per cell (c/16 -> 1): 8 + 16 + 32.
  nor = [[("skip_connect", 0), ("skip_connect", 1)], [("max_pool_3x3", 2), ("avg_pool_3x3", 0)]]
  red = [[("max_pool_3x3", 0), ("avg_pool_3x3", 1)], [("skip_connect", 2), ("max_pool_3x3", 2)]]
  g = cs.SpaceGenotype("nsganet", nor, red)
  shapes = lambda net: jax.eval_shape(net.init_variables, jax.random.key(0))
  assert count_params(shapes(SpaceNetwork(g, C=4, layers=3))) == 1046
  assert count_params(shapes(SpaceNetwork(g, C=4, layers=3, se=True))) == 1102
  # ENAS, C=4, 5 cells (L=3: reductions 1 and 3), concat (0, 3) normal and (1, 3) reduce, FR for the
  # unused input of a reduction cell, a base 1x1 on s1 everywhere, 1x1 calibration only where the
  # widths differ (cell 1: s1 has 2 x 4 = 8 = C channels, none), a bias-free classifier:
  # 348 + 136 + (112 + 80 + 80) + 304 + 576 + 1120 + 320
  red_e = [[("max_pool_3x3", 0), ("avg_pool_3x3", 0)], [("identity", 2), ("identity", 2)]]
  ge = cs.SpaceGenotype("enas", HAND, red_e)
  assert ge.reduce_concat == (1, 3)
  net = SpaceNetwork(ge, C=4, layers=5, auxiliary=True)
  assert net.reductions == (1, 3) and net.aux_position == 4
  assert count_params(shapes(net)) == 3076
  # pyramid widths (NSGA-Net CIFAR retraining): C + 4 i, no doubling
  assert [s.C for s in SpaceNetwork(g, C=4, layers=3, filter_increment=4).plan()] == [4, 8, 12]


def test_forward_shapes_of_each_protocol_network():
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  for space in ("enas", "nao", "nsganet"):
    p = get_protocol(space, preset="cpu")
    net = p.network(cs.sample(jax.random.key(3), space, "uniform"), 10)
    v = jax.eval_shape(net.init_variables, jax.random.key(0))
    logits, aux, _ = jax.eval_shape(lambda v: net.forward(v["params"], v["batch_stats"], x, train=True,
                                                          key=jax.random.key(1), drop_path_prob=0.1), v)
    assert logits.shape == aux.shape == (2, 10), space
  for proto, space in (("nao-224", "nao"), ("nsganet-224", "nsganet")):  # the 224-px macro (DARTS stems)
    p = get_protocol(proto)
    net = p.network(cs.sample(jax.random.key(3), space, "uniform"), 67)
    v = jax.eval_shape(net.init_variables, jax.random.key(0))
    big = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    logits, aux, _ = jax.eval_shape(lambda v: net.forward(v["params"], v["batch_stats"], big, train=True), v)
    assert logits.shape == aux.shape == (1, 67) and net.plan()[0].reduction_prev, proto


def test_protocols_and_schedules():
  e, n, s = get_protocol("enas"), get_protocol("nao"), get_protocol("nsganet")
  assert (e.layers, e.epochs, e.batch_size, e.nesterov, e.grad_clip, e.cutout_length) == (17, 630, 144, True, 0.0, 0)
  assert (n.layers, n.batch_size, n.head_dropout, n.cutout_length) == (20, 128, 0.4, 16)
  assert (s.C, s.filter_increment, s.se, s.batch_size) == (34, 4, True, 96)
  lr = optim.sgdr_epoch_schedule(0.05, 1e-4, 1)
  assert [float(lr(t)) for t in (0, 10, 30, 70)] == pytest.approx([0.05] * 4)
  assert float(lr(29)) == pytest.approx(1e-4 + 0.5 * (0.05 - 1e-4) * (1 + np.cos(np.pi * 19 / 20)), rel=1e-5)
  assert float(e.drop_path_at_step(0, 9, 10)) == pytest.approx(0.4 * 10 / (630 * 10))
  with pytest.raises(ValueError, match="SpaceGenotype"):
    e.network(__import__("jnas").genotypes.PUBLISHED["DARTS_V2"], 10)


# ------------------------------------------------------------------------------ searches on digits
@pytest.fixture(scope="module")
def digits():
  ds = D.load_digits(size=8, channels=3)
  tr = D.Split(ds.train.images[:256], ds.train.labels[:256])
  return ds, D.search_split(tr, seed=0, portion=0.5)


@pytest.mark.parametrize("name", ["enas", "nao"])
def test_weight_sharing_search_end_to_end(name, digits, fast_compile):
  from jnas.search import METHODS, config_for, run
  ds, (w, a) = digits
  tiny = dict(C=4, layers=3, num_nodes=2, batch_size=16, epochs=2, num_classes=10, w_lr=0.05)
  extra = ({"ctl_lstm_size": 8, "ctl_train_steps": 2, "ctl_num_aggregate": 2, "derive_samples": 4} if name == "enas"
           else {"eval_epochs": 1, "seed_archs": 6, "new_archs": 3, "random_archs": 2, "top_archs": 3,
                 "epd_epochs": 2, "epd_expand": 1, "epd_hidden": 16, "epd_mlp_hidden": 8})
  config = config_for(METHODS[name], "paper", **tiny, **extra)
  res = run.run_search(METHODS[name], config, [0], w, a, quiet=True, mean=ds.mean, std=ds.std)
  g = res["genotypes"][0]
  assert isinstance(g, cs.SpaceGenotype) and g.space == name and len(g.normal) == 2
  losses = [r["train_loss"] for r in res["history"]]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0] + 0.05
  if name == "nao":  # the second round's pool holds the seeds, the EPD's proposals and fresh random arcs
    assert len(res["history"]) == 2


def test_nsganet_search_end_to_end(digits, fast_compile):
  from jnas.search import nsganet
  ds, (w, a) = digits
  c = nsganet.NSGANetConfig(C=4, layers=3, batch_size=16, pop_size=2, n_gens=2, n_offspring=1, n_blocks=2,
                            candidate_epochs=1)
  # 'auto': this short budget trains every candidate through one shared program; NSGA-Net's own
  # (20 epochs of 20k images) compiles per candidate
  assert nsganet.shares_program(c, len(w.labels))
  assert not nsganet.shares_program(nsganet.NSGANetConfig(), 20000)
  assert nsganet.shares_program(nsganet.NSGANetConfig(share_program="on"), 20000)
  with pytest.raises(ValueError, match="share_program"):
    nsganet.NSGANetConfig(share_program="yes")
  res = nsganet.search(c, [0], w, a, quiet=True, mean=ds.mean, std=ds.std)
  g = res["genotypes"][0]
  assert g.space == "nsganet" and len(g.normal) == 2
  gens = [r["generation"] for r in res["history"]]
  assert gens.count(1) == 2 and len(gens) <= 3
  assert res["fronts"][0] and all(0 <= acc <= 100 and mp > 0 for _, acc, mp in res["fronts"][0])
