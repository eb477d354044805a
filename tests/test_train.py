"""Retraining (jnas.train) and protocols (jnas.protocols) on tiny networks.

Compile time dominates on CPU, so every training test reuses one protocol (C=4, 2 cells: both are
reduction cells, so DARTS_V2 runs only pooling and skip ops) and the programs `jnas.train.programs`
caches per (genotype, protocol): the first test that trains a genotype pays its compile.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas import genotypes
from jnas import train as T
from jnas.network import Network
from jnas.protocols import ALIASES, LADDER, PROTOCOLS, Protocol, cpu_preset, get_protocol

G1 = genotypes.DARTS_V2
# A second cheap genotype: pooling and skip ops in the reduction cell (the only cell type at 2 layers).
G2 = jnas.Genotype.parse(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('avg_pool_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 0), ('avg_pool_3x3', 2), "
    "('skip_connect', 2), ('max_pool_3x3', 1), ('avg_pool_3x3', 3), ('skip_connect', 0)], reduce_concat=[2, 3, 4, 5])")

TINY = get_protocol("darts", C=4, layers=1, epochs=2, batch_size=32, auxiliary_weight=0.0, cutout_length=4,
                    train_images=192, test_images=100)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def digits():
  return jnas.data.load_digits(size=16, channels=3)


def _train(ds, gs, seeds=SEEDS, protocol=TINY, **kw):
  kw.setdefault("quiet", True)
  return T.train_genotypes(gs, seeds, protocol, ds.train, ds.test, num_classes=10, mean=ds.mean, std=ds.std, **kw)


@pytest.fixture(scope="module")
def alone(fast_compile, digits):
  return _train(digits, [G1])


# ------------------------------------------------------------------------------------ protocols
def _diff(a: Protocol, b: Protocol) -> set:
  da, db = a.to_dict(), b.to_dict()
  return {k for k in da if k != "name" and da[k] != db[k]}


def _config_diff(a: Protocol, b: Protocol) -> set:
  ca, cb = a.training_config(), b.training_config()
  return {k for k in ca if ca[k] != cb[k]}


@pytest.mark.parametrize("before, after, fields, derived", [
    ("base", "A", {"auxiliary_weight"}, {"network.auxiliary", "loss.auxiliary_weight"}),
    ("base", "D", {"drop_path_prob"}, {"drop_path.max", "drop_path.first_last"}),
    ("base", "C", {"cutout_length"}, {"augment.cutout_length"}),
    ("C", "C+D", {"drop_path_prob"}, {"drop_path.max", "drop_path.first_last"}),
    ("D", "C+D", {"cutout_length"}, {"augment.cutout_length"}),
    ("C+D", "C+D+A", {"auxiliary_weight"}, {"network.auxiliary", "loss.auxiliary_weight"}),
    ("C+D+A", "C+D+A+50C", {"C"}, {"network.C"}),
    ("C+D+A", "C+D+A+AA", {"autoaugment"}, {"augment.autoaugment"}),
    ("C+D+A+AA", "C+D+A+AA+1500E", {"epochs"}, {"schedule.epochs", "drop_path.first_last"}),
    ("C+D+A+AA+1500E", "C+D+A+AA+50C+1500E", {"C"}, {"network.C"}),
    ("darts", "nasbench-224", {"macro", "layers", "pool_bn"},
     {"network.macro", "network.layers", "network.pool_bn", "augment.image_size"}),
])
def test_each_switch_changes_exactly_what_it_names(before, after, fields, derived):
  a, b = PROTOCOLS[before], PROTOCOLS[after]
  assert _diff(a, b) == fields
  assert _config_diff(a, b) == derived
  # the cpu preset keeps the switch and only the switch (C and epochs scale with it)
  ca, cb = cpu_preset(a), cpu_preset(b)
  assert _diff(ca, cb) == (fields - {"layers"} | {"image_size"}) if "macro" in fields else fields


def test_protocol_values_from_the_paper():
  base, darts = PROTOCOLS["base"], PROTOCOLS["darts"]
  assert (base.cutout_length, base.drop_path_prob, base.auxiliary_weight, base.autoaugment) == (0, 0.0, 0.0, False)
  assert (base.epochs, base.C, base.layers, base.batch_size, base.lr, base.lr_min) == (600, 36, 20, 96, 0.025, 0.0)
  assert (base.momentum, base.weight_decay, base.grad_clip) == (0.9, 3e-4, 5.0)
  assert (darts.cutout_length, darts.drop_path_prob, darts.auxiliary_weight) == (16, 0.2, 0.4)
  assert dataclasses.replace(Protocol(), name="C+D+A") == darts  # the defaults are the DARTS protocol
  assert PROTOCOLS["all"].to_dict() == dict(darts.to_dict(), name="C+D+A+AA+50C+1500E", C=50, epochs=1500,
                                            autoaugment=True)
  assert set(LADDER) | set(ALIASES) | {"nasbench-224", "lhd", "enas", "nao", "nsganet", "nao-224",
                                       "nsganet-224"} == set(PROTOCOLS)
  lhd = PROTOCOLS["lhd"]  # LHD's eval/cifar10/train.py defaults (its drop path is per concat output)
  assert (lhd.epochs, lhd.batch_size, lhd.lr, lhd.lr_min, lhd.cutout_length, lhd.auxiliary_weight, lhd.drop_path_prob,
          lhd.C, lhd.layers, lhd.weight_decay, lhd.grad_clip) == (600, 64, 0.025, 0.0, 16, 0.4, 0.01, 36, 20, 3e-4, 5.0)
  assert not darts.network(G1, 10).pool_bn and darts.network(G1, 10).auxiliary
  assert not base.network(G1, 10).auxiliary
  cpu = get_protocol("+1500E", preset="cpu")
  assert (cpu.layers, cpu.C, cpu.epochs, cpu.autoaugment) == (8, 16, 5, True)
  assert get_protocol("+50C", preset="cpu").C == 22


def test_protocol_errors():
  with pytest.raises(ValueError, match="unknown protocol 'dart'"):
    get_protocol("dart")
  with pytest.raises(ValueError, match="unknown preset"):
    get_protocol("darts", preset="gpu")
  with pytest.raises(ValueError, match=r"unknown protocol field\(s\) \['chanels'\]"):
    get_protocol("darts", chanels=3)
  with pytest.raises(ValueError, match="drop_path_prob"):
    get_protocol("darts", drop_path_prob=1.0)
  with pytest.raises(ValueError, match="macro"):
    get_protocol("darts", macro="resnet")
  with pytest.raises(ValueError, match="AutoAugment"):
    get_protocol("nasbench-224", autoaugment=True)


def test_drop_path_schedule():
  p = PROTOCOLS["darts"]  # p = 0.2 * epoch / 600 [DARTS-C train.py]
  assert [p.drop_path_at(e) for e in (0, 1, 300, 599)] == [0.0, 0.2 / 600, 0.1, 0.2 * 599 / 600]
  assert PROTOCOLS["C"].drop_path_at(300) == 0.0
  q = get_protocol("D", epochs=4)
  assert [q.drop_path_at(e) for e in range(4)] == [0.0, 0.05, 0.1, 0.2 * 3 / 4]


def test_lr_schedule_per_epoch():
  p = get_protocol("darts", epochs=4)
  sched = p.lr_schedule(steps_per_epoch=3)
  lrs = [float(sched(t)) for t in range(12)]
  want = [0.025 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
  np.testing.assert_allclose(lrs, np.repeat(want, 3), rtol=1e-6)


# ------------------------------------------------------------------------------------------ loss
def test_auxiliary_loss_weighting_and_label_smoothing(fast_compile):
  net = Network(G1, C=4, layers=2, num_classes=10, auxiliary=True)  # 32 px: the aux head sees 8x8
  v = net.init_variables(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  y = jnp.array([0, 1, 2, 3, 4, 9])

  def by_hand(logits, eps):
    logp = np.asarray(jax.nn.log_softmax(logits))
    target = (1 - eps) * np.eye(10)[np.asarray(y)] + eps / 10
    return float(np.mean(-(target * logp).sum(-1)))

  cases = ((0.4, 0.0), (0.4, 0.1), (0.0, 0.0))

  @jax.jit
  def run(params, stats):  # one compile for the forward pass and the three protocols
    logits, aux, _ = net.forward(params, stats, x, train=True)
    losses = [T.training_loss(net, get_protocol("darts", auxiliary_weight=w, label_smoothing=eps), params, stats, x, y,
                              key=None, drop_path_prob=0.0) for w, eps in cases]
    return logits, aux, [(loss, out) for loss, (out, _) in losses]

  logits, aux, losses = run(v["params"], v["batch_stats"])
  for (w, eps), (loss, out) in zip(cases, losses):
    want = by_hand(logits, eps) + w * by_hand(aux, eps)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------- training
def test_result_shape_and_values(alone):
  assert len(alone) == 2
  for r, s in zip(alone, SEEDS):
    assert set(r) == {"genotype", "genotype_hash", "genotype_index", "seed", "test_acc", "train_loss", "train_acc",
                      "final_acc", "best_acc", "best_epoch", "params", "status"}
    assert (r["genotype_index"], r["seed"], r["status"]) == (0, s, "ok")
    assert jnas.Genotype.parse(r["genotype"]) == G1 and r["genotype_hash"] == G1.hash()
    assert len(r["test_acc"]) == len(r["train_loss"]) == len(r["train_acc"]) == TINY.epochs
    assert r["final_acc"] == r["test_acc"][-1] and r["best_acc"] == max(r["test_acc"]) == r["test_acc"][r["best_epoch"]]
    assert all(0 <= a <= 100 for a in r["test_acc"] + r["train_acc"]) and all(np.isfinite(r["train_loss"]))
    assert r["params"] == jnas.count_params(TINY.network(G1, 10).init_variables(jax.random.key(0))["params"])
  assert alone[0]["test_acc"] != alone[1]["test_acc"] or alone[0]["train_loss"] != alone[1]["train_loss"]


@pytest.fixture(scope="module")
def singles(alone, digits):
  """[G2, G1], one program per genotype."""
  return _train(digits, [G2, G1], pack_size=1)


def test_alone_equals_inside_a_batch_of_genotypes(alone, singles):
  assert [(r["genotype_index"], r["seed"]) for r in singles] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  for a, b in zip(alone, singles[2:]):
    assert dict(a, genotype_index=1) == b
  assert singles[0]["genotype_hash"] == G2.hash() and singles[0]["params"] != singles[2]["params"]


def _same_numbers(a: list[dict], b: list[dict]):
  """Equal results up to float summation order: losses to 1e-5, accuracies to one image."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert {k: v for k, v in x.items() if k not in ("test_acc", "train_loss", "train_acc", "final_acc", "best_acc",
                                                     "best_epoch")} == \
        {k: v for k, v in y.items() if k not in ("test_acc", "train_loss", "train_acc", "final_acc", "best_acc",
                                                  "best_epoch")}
    np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(x["test_acc"], y["test_acc"], atol=100 / TINY.test_images + 1e-9)
    np.testing.assert_allclose(x["train_acc"], y["train_acc"], atol=100 / TINY.train_images + 1e-9)


def test_packed_equals_one_program_per_genotype(singles, digits, tmp_path):
  packed = _train(digits, [G2, G1], pack_size=2)
  _same_numbers(packed, singles)
  # a packed run resumes from a mid-epoch checkpoint to the same result, keeping its packing
  spe = TINY.train_images // TINY.batch_size
  out = str(tmp_path / "packed")
  with pytest.raises(T.TrainingInterrupted):
    _train(digits, [G2, G1], out=out, pack_size=2, _stop_at=spe + 1)
  assert json.loads((tmp_path / "packed" / "config.json").read_text())["packs"] == [[0, 1]]
  resumed = _train(digits, [G2, G1], out=out, resume=True)
  _same_numbers(resumed, packed)
  recs = [json.loads(line) for line in (tmp_path / "packed" / "metrics.jsonl").read_text().splitlines()]
  assert sorted((r["epoch"], r["genotype_index"], r["seed"]) for r in recs) == [
      (e, g, s) for e in range(TINY.epochs) for g in (0, 1) for s in SEEDS]


def test_nan_in_a_pack_stops_only_that_pair(singles, digits):
  spe = TINY.train_images // TINY.batch_size
  prog = T.programs((G2, G1), TINY, 10, spe)
  net = prog.net
  keys = jax.vmap(jax.random.key)(jnp.asarray(SEEDS, jnp.uint32))
  state = prog.init(keys)
  seed1 = jax.tree.map(lambda a: a[1], state.params)
  poisoned = net.pack([net.unpack(seed1, 0), jax.tree.map(lambda a: a * jnp.nan, net.unpack(seed1, 1))])
  state = state._replace(params=jax.tree.map(lambda a, b: a.at[1].set(b), state.params, poisoned))
  before = [[net.unpack(jax.tree.map(lambda a: np.asarray(a[s]), state.params), k) for k in (0, 1)] for s in (0, 1)]
  train = jax.device_put(T._subset(digits.train, TINY.train_images))
  norm = jnp.asarray(digits.mean, jnp.float32), jnp.asarray(digits.std, jnp.float32)
  state = prog.step(state, train.images, train.labels, prog.permutations(keys, 0, len(train.labels)), 0, keys, 0,
                    0.0, *norm)
  assert np.asarray(state.alive).tolist() == [[True, True], [True, False]]
  after = [[net.unpack(jax.tree.map(lambda a: np.asarray(a[s]), state.params), k) for k in (0, 1)] for s in (0, 1)]
  for s, k in ((0, 0), (0, 1), (1, 0)):  # the three healthy pairs trained
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[s][k]), jax.tree.leaves(after[s][k])))
  for a, b in zip(jax.tree.leaves(before[1][1]), jax.tree.leaves(after[1][1])):  # the poisoned one kept its weights
    np.testing.assert_array_equal(a, b)


def test_resume_equals_uninterrupted(alone, digits, tmp_path):
  full = _train(digits, [G1], out=str(tmp_path / "full"))
  assert full == alone
  spe = TINY.train_images // TINY.batch_size
  with pytest.raises(T.TrainingInterrupted, match="resume"):
    _train(digits, [G1], out=str(tmp_path / "cut"), _stop_at=spe + 2)  # epoch 1, step 2
  assert not (tmp_path / "cut" / "results.json").exists()
  with pytest.raises(FileExistsError):
    _train(digits, [G1], out=str(tmp_path / "cut"))
  resumed = _train(digits, [G1], out=str(tmp_path / "cut"), resume=True)
  assert resumed == full
  for name in ("full", "cut"):
    d = tmp_path / name
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["epoch"], r["seed"]) for r in recs) == [(e, s) for e in range(TINY.epochs) for s in SEEDS]
    assert [r["drop_path_prob"] for r in recs if r["seed"] == 0] == [TINY.drop_path_at(e) for e in range(TINY.epochs)]
    saved = json.loads((d / "results.json").read_text())
    assert saved["results"] == full and saved["protocol"] == TINY.to_dict()
    config = json.loads((d / "config.json").read_text())
    assert config["seeds"] == list(SEEDS) and config["protocol"]["name"] == "C+D+A"
    assert os.listdir(d / "checkpoints")
  with pytest.raises(ValueError, match="config differs"):
    _train(digits, [G1], seeds=(0, 2), out=str(tmp_path / "cut"), resume=True)


def test_nan_stops_the_pair_and_the_others_go_on(alone, digits):
  prog = T.programs(G1, TINY, 10, TINY.train_images // TINY.batch_size)
  keys = jax.vmap(jax.random.key)(jnp.asarray(SEEDS, jnp.uint32))
  state = prog.init(keys)
  poison = lambda a: a.at[1].set(jnp.nan) if jnp.issubdtype(a.dtype, jnp.floating) else a
  state = state._replace(params=jax.tree.map(poison, state.params))
  before = jax.tree.map(np.asarray, state.params)
  train = jax.device_put(T._subset(digits.train, TINY.train_images))
  perms = prog.permutations(keys, 0, len(train.labels))
  norm = jnp.asarray(digits.mean, jnp.float32), jnp.asarray(digits.std, jnp.float32)
  state = prog.step(state, train.images, train.labels, perms, 0, keys, 0, 0.0, *norm)
  assert np.asarray(state.alive).tolist() == [True, False]
  after = jax.tree.map(np.asarray, state.params)
  changed = [not np.array_equal(a[0], b[0]) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
  assert any(changed)  # seed 0 trained
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):  # seed 1 kept its (poisoned) weights
    np.testing.assert_array_equal(a[1], b[1])


def test_nan_end_to_end(alone, digits, capsys):
  # std = 0 turns every normalised image into inf/nan: every pair dies in its first epoch, with a
  # message, and the run still returns (the same compiled program: mean/std are inputs)
  res = T.train_genotypes([G1], SEEDS, TINY, digits.train, digits.test, num_classes=10, quiet=True,
                          mean=digits.mean, std=(0.0, 0.0, 0.0))
  assert [r["status"] for r in res] == ["nan (epoch 0)"] * 2
  assert all(r["test_acc"] == [] and np.isnan(r["final_acc"]) for r in res)
  assert "non-finite" in capsys.readouterr().err


def test_bad_input(digits):
  with pytest.raises(ValueError, match="distinct"):
    _train(digits, [G1], seeds=(0, 0))
  with pytest.raises(ValueError, match="not a jnas.Genotype"):
    _train(digits, [str(G1)])
  with pytest.raises(ValueError, match="3 channels"):
    gray = jnas.data.load_digits(size=16)
    T.train_genotypes([G1], SEEDS, TINY, gray.train, gray.test, num_classes=10)
  with pytest.raises(ValueError, match="Protocol"):
    T.train_genotypes([G1], SEEDS, "darts", digits.train, digits.test, num_classes=10)
