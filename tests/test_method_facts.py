"""Facts of the robustness, stage and bandit methods that need no supernet compile: DARTS-ES's stop
rule on synthetic eigenvalue traces (and, through ``run_search`` with a toy method whose metrics
carry a planted trace, that the run stops there and returns that epoch's genotype, also after a
resume), seeds grouped by their stage contexts, SS-DARTS's selective stop, StacNAS's stage 2 holding only the winning groups' members,
and MANAS's policies concentrating on the arm with the lowest planted loss."""

import dataclasses
import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnas.data as D
from jnas import optim, space
from jnas.genotype import Genotype, derive_genotype
from jnas.search import (METHODS, base, beta_darts, config_for, darts, darts_minus, edge_weights, gaea, manas, rarts,
                         rdarts, sddarts, select, small_temp, spdarts, ssdarts,
                         stacnas, temperature)
from jnas.search.registry import MethodSpec
from jnas.search.run import Interrupted, run_search
from jnas.train import cross_entropy


# ----------------------------------------------------------------------------------- DARTS-ES
def _trace(jump_at, epochs=50, every=2, low=1.0, high=10.0):
  """lambda at the evaluation epochs (e % every == 0, and the last), stepping at ``jump_at``."""
  return [(e, high if e >= jump_at else low) for e in range(epochs) if e % every == 0 or e == epochs - 1]


def test_darts_es_rule_names_the_epoch_by_hand():
  # Default constants (window 5, every 2 epochs, delta 4, start 10, factor 1.3), lambda 1 -> 10 at
  # epoch 30: the first window holding the jump is that of epoch 30 (epochs 22..30, mean 2.8),
  # attributed to 26 and compared with the one attributed to 26 - 8 = 18 (mean 1): stop at 18.
  assert rdarts.es_stop_epoch(_trace(30), 50) == 18
  # local averages: from the 3rd value, the mean of all values, then windows of 5
  la = rdarts.local_averages([(0, 1.0), (2, 2.0), (4, 6.0), (6, 3.0), (8, 8.0), (10, 1.0)], 50)
  assert [a for _, a, _ in la] == [3.0, 3.0, 4.0, 4.0]
  assert [at for _, _, at in la] == [0, 2, 4, 6]
  # never before (e - 4) - 8 >= 10; a jump so early that every compared window holds it: no stop
  assert rdarts.es_stop_epoch(_trace(4), 50) is None
  assert rdarts.es_stop_epoch(_trace(100), 50) is None
  # a rise below the factor does not stop; nor a rise at the last epoch
  assert rdarts.es_stop_epoch(_trace(30, high=1.2), 50) is None
  assert rdarts.es_stop_epoch(_trace(49), 50) is None
  assert rdarts.es_stop_epoch(_trace(48), 50) == 36
  # small constants (every epoch, window 3, delta 1, start 1): lambda 1 -> 10 at epoch 4 stops at 2
  small = dict(window=3, ev_freq=1, delta=1, es_start_epoch=1)
  assert rdarts.es_stop_epoch(_trace(4, 8, 1), 8, **small) == 2
  assert rdarts.es_stop_epoch(_trace(5, 8, 1), 8, **small) == 3


@dataclasses.dataclass(frozen=True)
class _ToyConfig(rdarts.RDartsConfig):
  C: int = 4
  layers: int = 3
  steps: int = 2
  primitives: tuple = ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3")
  batch_size: int = 16
  epochs: int = 8
  early_stop: bool = True
  window: int = 3
  ev_freq: int = 1
  delta: int = 1
  es_start_epoch: int = 1


def _toy_build(config, steps_per_epoch):
  """A linear classifier as the 'supernet' (compiles in about a second): its step reports a
  planted hessian_max (1, then 10 from epoch 4, or 5 for a seed with lr_scale 2) and moves the
  alphas so that every epoch derives another genotype."""
  E, O = space.num_edges(config.steps), len(config.primitives)

  def init(key):
    return base.SearchState(params={"w": jnp.zeros((8 * 8 * 3, 10))}, batch_stats={"b": jnp.zeros(1)},
                            arch={"normal": jnp.zeros((E, O)), "reduce": jnp.zeros((E, O))},
                            w_opt={"m": jnp.zeros(1)}, a_opt={"m": jnp.zeros(1)}, key=key,
                            step=jnp.zeros((), jnp.int32), alive=jnp.ones((), bool),
                            lr_scale=jnp.ones((), jnp.float32))

  def loss(w, batch):
    x, y = batch
    return cross_entropy(x.reshape(x.shape[0], -1) @ w, y)

  def step(state, train_batch, val_batch):
    value, g = jax.value_and_grad(loss)(state.params["w"], train_batch)
    epoch = state.step // steps_per_epoch
    lam = jnp.where(epoch >= jnp.where(state.lr_scale > 1, 5, 4), 10.0, 1.0)
    bump = jax.nn.one_hot(epoch % E, E)[:, None] * jax.nn.one_hot(1 + epoch % (O - 1), O)[None]
    arch = {t: a + bump for t, a in state.arch.items()}
    new = state._replace(params={"w": state.params["w"] - 0.01 * g}, arch=arch, step=state.step + 1)
    return new, {"train_loss": value, "hessian_max": lam, "alive": jnp.ones((), bool)}

  def derive(state, data=None):
    arch = state.arch if isinstance(state, base.SearchState) else state
    return derive_genotype({t: np.asarray(a) for t, a in arch.items()}, primitives=config.primitives,
                           steps=config.steps)

  def evaluate(state, batch):
    logits = batch[0].reshape(batch[0].shape[0], -1) @ state.params["w"]
    return {"loss": cross_entropy(logits, batch[1]), "correct": jnp.sum(jnp.argmax(logits, -1) == batch[1])}

  method = base.SearchMethod(init=init, step=step, derive=derive, evaluate=evaluate, epochs=config.epochs)
  rules = rdarts._rules(config)
  return base.Search("toy-es", config, 1, lambda index, context: base.Stage("toy", method), stop=rules["stop"],
                     select=rules["select"])


TOY = MethodSpec(name="toy-es", config=_ToyConfig, build=_toy_build, paper="-", changes="-")


@pytest.fixture(scope="module")
def toy_data():
  ds = D.load_digits(size=8, channels=3)
  w, a = D.search_split(ds.train, seed=0)
  return ds, D.Split(w.images[:64], w.labels[:64]), D.Split(a.images[:64], a.labels[:64])


def test_run_search_stops_at_the_rule_and_returns_the_stop_epochs_genotype(toy_data, tmp_path):
  ds, w, a = toy_data
  out = str(tmp_path / "run")
  kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16, seed_lr_scale={1: 2.0})
  res = run_search(TOY, _ToyConfig(), [0, 1], w, a, out=out, **kw)
  # seed 0 stops after epoch 4 (stop epoch 2), seed 1 after epoch 5 (stop epoch 3): the run ends
  # after 6 of its 8 epochs, and each seed's result is its stop epoch's genotype
  epochs = {s: [r["epoch"] for r in res["history"] if r["seed"] == s] for s in (0, 1)}
  assert epochs == {0: list(range(6)), 1: list(range(6))}
  assert res["selected_epoch"] == {0: 2, 1: 3}
  for s, sel in res["selected_epoch"].items():
    rec = next(r for r in res["history"] if r["seed"] == s and r["epoch"] == sel)
    assert str(res["genotypes"][s]) == rec["genotype"]
    assert res["genotypes"][s] != Genotype.parse(res["history"][-1]["genotype"])  # not the last epoch's
  with open(os.path.join(out, "results.json")) as f:
    assert [r["selected_epoch"] for r in json.load(f)["seeds"]] == [2, 3]
  with open(os.path.join(out, "seed_0", "genotype.json")) as f:
    assert Genotype.from_json(f.read()) == res["genotypes"][0]
  # interrupted in epoch 3 and resumed: the same stop, the same records
  out2 = str(tmp_path / "run2")
  with pytest.raises(Interrupted):
    run_search(TOY, _ToyConfig(), [0, 1], w, a, out=out2, stop_at=3 * 4 + 1, **kw)
  res2 = run_search(TOY, _ToyConfig(), [0, 1], w, a, out=out2, resume=True, **kw)
  assert res2["selected_epoch"] == res["selected_epoch"] and res2["genotypes"] == res["genotypes"]
  assert [(r["seed"], r["epoch"]) for r in res2["history"]] == [(r["seed"], r["epoch"]) for r in res["history"]]


# ----------------------------------------------------------------------------------- DARTS-ADA
@dataclasses.dataclass(frozen=True)
class _ToyAdaConfig(rdarts.DartsADAConfig):
  C: int = 4
  layers: int = 3
  steps: int = 2
  primitives: tuple = ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3")
  batch_size: int = 16
  epochs: int = 8
  window: int = 3
  ev_freq: int = 1
  delta: int = 1
  es_start_epoch: int = 1


def _toy_ada_build(config, steps_per_epoch, replay=False):
  """DARTS-ADA's rules on a toy whose trajectory does not depend on the data order: the weights
  follow the gradient of 0.5 ||w - target||^2 (a fixed matrix) through the real SGD chain with a traced weight decay,
  the planted hessian_max is 10 from the seed's epoch 4 while the decay is below 1e-2 (1 for a seed
  with lr_scale 2), the alphas move each epoch. ``replay``: rollbacks keep the weight decay."""
  E, O = space.num_edges(config.steps), len(config.primitives)
  tx = optim.weight_optimizer(0.05, weight_decay=config.w_weight_decay, grad_clip=None, traced_weight_decay=True)

  def init(key):
    params = {"w": jnp.zeros((8 * 8 * 3, 10))}
    return base.SearchState(params=params, batch_stats={"b": jnp.zeros(1)},
                            arch={"normal": jnp.zeros((E, O)), "reduce": jnp.zeros((E, O))},
                            w_opt=tx.init(params), a_opt={"m": jnp.zeros(1)}, key=key,
                            step=jnp.zeros((), jnp.int32), alive=jnp.ones((), bool), lr_scale=jnp.ones((), jnp.float32))

  def step(state, train_batch, val_batch):
    w = state.params["w"]
    target = 0.1 * jnp.sin(jnp.arange(w.size, dtype=jnp.float32)).reshape(w.shape)
    updates, w_opt = tx.update({"w": w - target}, state.w_opt, state.params)
    epoch = state.step // steps_per_epoch
    wd = optim.weight_decay_of(state.w_opt)
    lam = jnp.where((epoch >= 4) & (wd < 1e-2) & (state.lr_scale == 1), 10.0, 1.0)
    bump = jax.nn.one_hot(epoch % E, E)[:, None] * jax.nn.one_hot(1 + epoch % (O - 1), O)[None]
    new = state._replace(params=optax.apply_updates(state.params, updates), w_opt=w_opt,
                         arch={t: a + bump for t, a in state.arch.items()}, step=state.step + 1)
    return new, {"train_loss": 0.5 * jnp.sum((w - target) ** 2), "hessian_max": lam, "weight_decay": wd,
                 "alive": jnp.ones((), bool)}

  def derive(state, data=None):
    arch = state.arch if isinstance(state, base.SearchState) else state
    return derive_genotype({t: np.asarray(a) for t, a in arch.items()}, primitives=config.primitives,
                           steps=config.steps)

  def evaluate(state, batch):
    logits = batch[0].reshape(batch[0].shape[0], -1) @ state.params["w"]
    return {"loss": cross_entropy(logits, batch[1]), "correct": jnp.sum(jnp.argmax(logits, -1) == batch[1])}

  method = base.SearchMethod(init=init, step=step, derive=derive, evaluate=evaluate, epochs=config.epochs)
  rules = rdarts._ada_rules(config)
  del rules["monitor"], rules["monitor_every"]  # (the toy reports its planted trace itself)
  if replay:
    adapt = rules["adapt"]

    def same_decay(records):
      d = adapt(records)
      return None if d is None else (d[0], lambda state: state, "the same weight decay")
    rules["adapt"] = same_decay
  return base.single_stage("toy-ada", config, method, **rules)


TOY_ADA = MethodSpec(name="toy-ada", config=_ToyAdaConfig, build=_toy_ada_build, paper="-", changes="-")
TOY_REPLAY = MethodSpec(name="toy-replay", config=_ToyAdaConfig, build=functools.partial(_toy_ada_build, replay=True),
                        paper="-", changes="-")


def test_darts_ada_rule_and_decays():
  assert rdarts.ada_weight_decays(rdarts.DartsADAConfig()) == pytest.approx([3e-4, 3e-3, 3e-2])
  assert rdarts.ada_weight_decays(rdarts.DartsADAConfig(mul_factor=3.0, max_weight_decay=0.0243)) == \
      pytest.approx([3e-4 * 3 ** k for k in range(5)])
  with pytest.raises(ValueError, match="never reaches"):
    rdarts.DartsADAConfig(mul_factor=7.0)
  search = METHODS["darts-ada"](rdarts.DartsADAConfig(), 10)
  assert search.extra_epochs == 24 and search.monitor == ("hessian",)  # 2 rollbacks of 12 epochs at most
  # a trajectory with lambda 1 -> 10 at epoch 30: the rule holds at evaluation epoch 30, stop epoch 18
  lam = dict(_trace(30))  # (a record every epoch; the eigenvalue every 2nd)
  recs = [{"epoch": e, "hessian_max": lam.get(e), "rollbacks": 0, "alive": True} for e in range(50)]
  upto = lambda e, k=0: [dict(r, rollbacks=k) for r in recs if r["epoch"] <= e]
  assert search.adapt(upto(28)) is None
  to, update, what = search.adapt(upto(30))
  assert to == 18 and "0.0003 to 0.003" in what
  state = types.SimpleNamespace(w_opt=optim.weight_optimizer(0.1, traced_weight_decay=True).init({"w": jnp.ones(2)}))
  state._replace = lambda **kw: types.SimpleNamespace(**{**vars(state), **kw})
  assert float(optim.weight_decay_of(update(state).w_opt)) == pytest.approx(3e-3)
  assert search.adapt(upto(31)) is None  # (it held at 30, not now)
  assert search.adapt(upto(30, k=1))[0] == 18 and search.adapt(upto(30, k=2)) is None  # 3e-2: the last iteration
  assert search.snapshot_at(18) and search.snapshot_at(36) and not search.snapshot_at(38) and not search.snapshot_at(17)
  with pytest.raises(ValueError, match="extra_rollback_epochs"):
    rdarts.DartsADAConfig(extra_rollback_epochs=1)


def _run_records(res, seed):
  return [(r["epoch"], r["search_epoch"], r["weight_decay"], r["eval_loss"], r["genotype"])
          for r in res["history"] if r["seed"] == seed]


def test_darts_ada_rolls_back_each_seed_in_one_program(toy_data, tmp_path):
  ds, w, a = toy_data
  kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16, seed_lr_scale={1: 2.0})
  cfg = _ToyAdaConfig()
  res = run_search(TOY_ADA, cfg, [0, 1], w, a, out=str(tmp_path / "run"), **kw)
  # seed 0: the rule holds at its epoch 4 (stop epoch 2) under 3e-4 and again under 3e-3; seed 1 never.
  # The run lasts until seed 0 has done its 8 epochs: 5 + 2 + 5 = 12 epochs
  assert res["rollbacks"] == {0: [{"after_epoch": 4, "loop_epoch": 4, "to_epoch": 2},
                                  {"after_epoch": 4, "loop_epoch": 6, "to_epoch": 2}], 1: []}
  rec0 = _run_records(res, 0)
  assert [r[1] for r in rec0] == [0, 1, 2, 3, 4, 3, 4, 3, 4, 5, 6, 7]
  assert [r[2] for r in rec0] == pytest.approx([3e-4] * 5 + [3e-3] * 2 + [3e-2] * 5)
  assert [r[1] for r in _run_records(res, 1)] == list(range(12))  # (trains on, its result fixed)
  assert res["selected_epoch"] == {0: 7, 1: 7}
  assert str(res["genotypes"][0]) == rec0[-1][4] and str(res["genotypes"][1]) == _run_records(res, 1)[7][4]
  with open(tmp_path / "run" / "results.json") as f:
    assert [len(r["rollbacks"]) for r in json.load(f)["seeds"]] == [2, 0]
  # the restored state is the state at the end of the stop epoch: with the weight decay kept the
  # toy replays its epochs 3 and 4 exactly (its trajectory does not depend on the data order)
  rep = _run_records(run_search(TOY_REPLAY, cfg, [0, 1], w, a, out=None, **kw), 0)
  assert [r[1] for r in rep[:7]] == [0, 1, 2, 3, 4, 3, 4]
  assert rep[5][3] == rep[3][3] and rep[6][3] == rep[4][3] and rep[5][4] == rep[3][4]
  assert rec0[5][3] != rec0[3][3]  # (and with ADA's larger decay it does not)
  # in memory (no run directory) as on disk; killed in the boundary where the first rollback
  # happens, then mid-epoch after it: each resume gives the uninterrupted run's records
  assert _run_records(run_search(TOY_ADA, cfg, [0, 1], w, a, out=None, **kw), 0) == rec0
  out2 = str(tmp_path / "run2")
  spe = 4
  with pytest.raises(Interrupted):
    run_search(TOY_ADA, cfg, [0, 1], w, a, out=out2, stop_at=5 * spe, **kw)
  with pytest.raises(Interrupted):
    run_search(TOY_ADA, cfg, [0, 1], w, a, out=out2, resume=True, stop_at=6 * spe + 2, **kw)
  res2 = run_search(TOY_ADA, cfg, [0, 1], w, a, out=out2, resume=True, **kw)
  assert _run_records(res2, 0) == rec0 and _run_records(res2, 1) == _run_records(res, 1)
  assert res2["genotypes"] == res["genotypes"] and res2["rollbacks"] == res["rollbacks"]


# ------------------------------------------------------------------ stages: seeds grouped by context
def _toy_stages_build(config, steps_per_epoch):
  """Two stages of the toy classifier; the transition gives each seed the context {'scale': its
  lr_scale}, so seeds with equal scales share stage 2's program and the others get their own; the
  stage-2 step moves the weights by ``scale`` times the gradient."""
  def stage(index, context):
    scale = 1.0 if context is None else context["scale"]
    base_search = _toy_build(config, steps_per_epoch)
    method = base_search.stage(0, None).method

    def step(state, train_batch, val_batch):
      new, m = method.step(state, train_batch, val_batch)
      w = state.params["w"] + scale * (new.params["w"] - state.params["w"])
      return new._replace(params={"w": w}), {**m, "scale": jnp.full((), scale)}
    return base.Stage(f"stage {index + 1}", method._replace(step=step))

  def transition(index, state, context, key):
    return {"scale": float(state.lr_scale)}, state
  return base.Search("toy-stages", config, 2, stage, transition=transition)


TOY_STAGES = MethodSpec(name="toy-stages", config=_ToyConfig, build=_toy_stages_build, paper="-", changes="-")


def test_seeds_with_other_contexts_get_their_own_program_and_resume(toy_data, tmp_path):
  ds, w, a = toy_data
  cfg = _ToyConfig(epochs=2)
  kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16, seed_lr_scale={1: 2.0})
  out = str(tmp_path / "run")
  res = run_search(TOY_STAGES, cfg, [0, 1, 2], w, a, out=out, **kw)
  with open(os.path.join(out, "stages.json")) as f:
    stages = json.load(f)
  assert [st["groups"] for st in stages] == [1, 2]
  assert stages[1]["contexts"] == {"0": {"scale": 1.0}, "1": {"scale": 2.0}, "2": {"scale": 1.0}}
  assert {(r["seed"], r["scale"]) for r in res["history"] if r["stage"] == 1} == {(0, 1.0), (1, 2.0), (2, 1.0)}
  # stage 2 runs group [0, 2], then group [1], per epoch: positions of stage 2 (start 9): 2 epochs x 2 groups x 4
  assert stages[1]["start"] == 2 * 4 + 1
  with pytest.raises(Interrupted):  # inside stage 2: its first epoch, group [1], step 3
    run_search(TOY_STAGES, cfg, [0, 1, 2], w, a, out=str(tmp_path / "killed"), stop_at=9 + 4 + 2, **kw)
  resumed = run_search(TOY_STAGES, cfg, [0, 1, 2], w, a, out=str(tmp_path / "killed"), resume=True, **kw)
  assert resumed["genotypes"] == res["genotypes"]
  for s in (0, 1, 2):
    np.testing.assert_array_equal(resumed["arch"][s]["normal"], res["arch"][s]["normal"])
  key = lambda r: (r["stage"], r["epoch"], r["seed"], r["train_loss"], r["eval_loss"])
  assert sorted(map(key, resumed["history"])) == sorted(map(key, res["history"]))


def test_r_darts_configs():
  es = config_for(METHODS["darts-es"], "paper")
  assert es.early_stop and es.order == "second" and (es.window, es.ev_freq, es.delta, es.factor) == (5, 2, 4, 1.3)
  search = METHODS["darts-es"](es, 10)
  assert search.monitor == ("hessian",) and search.monitor_every == 2
  assert config_for(METHODS["rdarts-l2"], "paper").w_weight_decay == pytest.approx(3e-4 * 3 ** 4)
  dp = METHODS["rdarts-dp"](config_for(METHODS["rdarts-dp"], "paper", epochs=11), 5).stage(0, None).method
  assert dp.net.edge_drop_path and METHODS["rdarts-dp"](None, 5).stop is None
  with pytest.raises(ValueError, match="drop_path"):
    config_for(METHODS["rdarts-dp"], "paper", drop_path=1.5)


# ------------------------------------------------------------------------------------ SS-DARTS
def test_ss_darts_selective_stop():
  sep = 3  # sep_conv_3x3 among the 7 ops
  assert METHODS["ss-darts"].config().primitives.index("sep_conv_3x3") == sep
  m = np.full((6, 7), 1.0)
  m[:, sep] = [1.0, 2.0, 4.0, 3.0, 5.0, 0.5]
  m[4, 2] = 9.0  # in epoch 4 another op leads
  assert ssdarts.selective_stop_epoch(m, sep, "peak") == 4
  # gated: epoch 4 does not count (sep_conv_3x3 led from epoch 1 on, and is not the argmax there)
  assert ssdarts.selective_stop_epoch(m, sep, "gated") == 2
  search = METHODS["ss-darts"](None, 10)
  recs = [{"epoch": e, "op_magnitude": list(row)} for e, row in enumerate(m)]
  assert search.select(recs) == 4 and search.stop is None
  c = METHODS["ss-darts"].config()
  assert (c.w_lr, c.w_lr_min, c.a_lr, c.batch_size, c.epochs) == (0.025, 0.025, 1e-3, 80, 75)
  with pytest.raises(ValueError, match="stop_op"):
    config_for(METHODS["ss-darts"], "paper", primitives=("none", "skip_connect"))


def test_seven_op_searches_are_a_setting():
  from experiments import cli
  seven = tuple(space.PRIMITIVES[1:])
  values = cli.typed_overrides(["primitives=" + ",".join(seven)], base.config_fields(METHODS["darts"].config), "darts")
  assert values == {"primitives": seven}
  for name in ("darts", "pcdarts", "sdarts-rs"):
    net = METHODS[name](config_for(METHODS[name], "paper", primitives=seven), 10).stage(0, None).method.net
    assert tuple(net.primitives) == seven


# ------------------------------------------------------------------------------------- StacNAS
@pytest.mark.parametrize("skip_group", ["duplicate", "single"])
def test_stacnas_stage_two_holds_only_the_winning_groups(skip_group):
  config = config_for(METHODS["stacnas"], "paper", C=4, layers=3, layers2=4, skip_group=skip_group)
  search = METHODS["stacnas"](config, 10)
  first = search.stage(0, None).method
  reps = config.representatives
  assert tuple(first.net.primitives) == reps == ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3",
                                                 "none")
  E = space.num_edges(4)
  rng = np.random.default_rng(0)
  winners = {t: rng.integers(0, 4, E) for t in ("normal", "reduce")}
  # planted stage-1 alphas: the winner high, ``none`` higher still (it never wins)
  arch = {t: rng.normal(size=(E, 5)) * 0.1 + 2 * np.eye(5)[w] + 5 * np.eye(5)[[4] * E] for t, w in winners.items()}
  context, carried = search.transition(0, types.SimpleNamespace(arch=arch), None, jax.random.key(0))
  assert carried is None and context == {t: list(map(int, w)) for t, w in winners.items()}
  second = search.stage(1, context).method
  prims = config.primitives
  for t, mask in zip(("normal", "reduce"), second.net.op_mask):
    for e, row in enumerate(mask):
      members = set(config.groups[winners[t][e]][1:])
      assert {prims[o] for o, on in enumerate(row) if on} == members, (t, e)
  assert second.net.layers == 4
  # the mixing weights give the non-members exactly 0; the duplicated skip's two slots both count
  a2 = {t: jnp.asarray(rng.normal(size=(E, 3))) for t in ("normal", "reduce")}
  w2 = second.weights(a2, None, 0)
  for t, mask in zip(("normal", "reduce"), second.net.op_mask):
    np.testing.assert_array_equal(np.asarray(w2[t])[~np.asarray(mask)], 0.0)
    np.testing.assert_allclose(np.asarray(w2[t]).sum(-1), 1.0, rtol=1e-6)
  skip_edges = [e for e in range(E) if winners["normal"][e] == 1]
  if skip_edges:
    e, skip = skip_edges[0], prims.index("skip_connect")
    p = np.exp(np.asarray(a2["normal"][e]))
    want = (p[0] + p[1]) / p.sum() if skip_group == "duplicate" else p[0] / (p[0] + p[2])
    np.testing.assert_allclose(float(w2["normal"][e, skip]), want, rtol=1e-5)
  # derivation: members only, and per node the 2 edges of largest raw alpha
  g = second.derive(a2)
  for t, pairs in (("normal", g.normal), ("reduce", g.reduce)):
    for k, (op, i) in enumerate(pairs):
      e = space.edge_index(i, k // 2)
      assert op in config.groups[winners[t][e]][1:] and op != "none"


# ---------------------------------------------------------------------------------------- MANAS
def _bandit(policy_fn, feedback_fn, init, rounds, costs, key):
  """``rounds`` rounds of agents (rows of ``costs``) choosing arms; the loss is the sum of the
  chosen arms' planted costs plus noise."""
  A, K = costs.shape

  def body(carry, k):
    k_s, k_n = jax.random.split(k)
    p = policy_fn(carry)
    choice = jax.nn.one_hot(jax.random.categorical(k_s, jnp.log(p), axis=-1), K)
    loss = jnp.sum(choice * costs) + 0.1 * jax.random.normal(k_n)
    return feedback_fn(carry, choice, p, loss), None

  state, _ = jax.lax.scan(body, init, jax.random.split(key, rounds))
  return policy_fn(state)


def test_manas_policies_concentrate_on_the_lowest_planted_loss():
  rng = np.random.default_rng(0)
  costs = jnp.asarray(rng.uniform(0.5, 1.0, (6, 5)))
  best = rng.integers(0, 5, 6)
  costs = costs.at[jnp.arange(6), best].set(0.0)
  # EXP3-style credit with reward b - L (a temperature so low that the credit's variance decides
  # early can lock an agent on a worse arm: 100 does for one of 4 keys, 200 for none)
  p = jax.jit(lambda k: _bandit(lambda B: manas.exp3_policy(B, 0.05, 200.0),
                                lambda B, z, p, L: manas.exp3_feedback(B, z, p, 5.0 - L),
                                jnp.zeros((6, 5)), 4000, costs, k))(jax.random.key(0))
  assert np.all(np.argmax(np.asarray(p), -1) == best) and np.all(np.asarray(p).max(-1) > 0.7), p
  # least squares + Zipf: the planted best arm is ranked first, so drawn with 1 / H_5
  F = 6 * 5

  def ls_feedback(state, z, p, L):
    ZtZ, ZtL, _ = manas.ls_feedback(state[0], state[1], z.reshape(-1), L, 1e-3)
    return ZtZ, ZtL, _.reshape(6, 5)

  p = jax.jit(lambda k: _bandit(lambda s: manas.zipf_policy(s[2]), ls_feedback,
                                (jnp.zeros((F, F)), jnp.zeros(F), jnp.zeros((6, 5))), 600, costs, k))(jax.random.key(1))
  H5 = sum(1 / k for k in range(1, 6))
  np.testing.assert_allclose(np.asarray(p)[np.arange(6), best], 1 / H5, rtol=1e-5)
  np.testing.assert_allclose(np.sort(np.asarray(p), -1)[:, ::-1], np.tile(1 / (np.arange(1, 6) * H5), (6, 1)),
                             rtol=1e-5)


def test_manas_recommendation_and_temperature():
  c = config_for(METHODS["manas"], "paper", epochs=5)
  np.testing.assert_allclose([float(manas.temperature(c, e)) for e in (0, 2, 4)], [1000, 600, 200])
  ce = dataclasses.replace(c, temperature_decay="exponential")
  np.testing.assert_allclose(float(manas.temperature(ce, 2)), 1000 * 0.2 ** 0.5, rtol=1e-6)
  prims = space.PRIMITIVES
  E = space.num_edges(4)
  policy = {t: np.full((E, 8), 0.01) for t in ("normal", "reduce")}
  for t in policy:
    policy[t][:, 0] = 0.9  # ``none`` is never recommended
    policy[t][:, 4] = 0.5 + np.arange(E) / 100  # sep_conv_3x3; later edges stronger
  g = manas.recommend(policy, prims, 4, None)
  assert all(op == "sep_conv_3x3" for op, _ in g.normal)
  assert [i for _, i in g.normal[-2:]] == [4, 3]  # node 3: its two latest inputs
  g2 = manas.recommend(policy, prims, 4, np.random.default_rng(0))
  assert "none" not in g2.ops()


# ----------------------------------------------------------------- small temperatures (SP-DARTS, PCDEDD)
def test_temperature_schedules_match_their_formulas():
  mu, d = 3.99e-4, 0.11
  T = lambda i: mu / np.log(1 + d * i)
  pcd = temperature.pcd_temperatures(50)
  # epochs 0-39: the cycle 1, T_1..T_5, T_4..T_1; epochs 40-49: T_1..T_10 [the spec's values]
  np.testing.assert_allclose(pcd[:10], [1, T(1), T(2), T(3), T(4), T(5), T(4), T(3), T(2), T(1)], rtol=1e-6)
  np.testing.assert_allclose(pcd[30:40], pcd[:10]) and np.testing.assert_allclose(pcd[40:], [T(i) for i in range(1, 11)])
  np.testing.assert_allclose(pcd[[1, 2, 3, 4, 5, 49]], [3.823e-3, 2.007e-3, 1.399e-3, 1.094e-3, 9.10e-4, 5.378e-4], rtol=1e-3)
  # EDD on uniform alphas (entropy ln 7 at any T): d and c move at epochs 5, 10, ..., 35, then every epoch
  state, h = temperature.edd_init(), np.log(7)
  want_d, c, seen = 0.0, 1.0, []
  for epoch in range(50):
    state = temperature.edd_update(state, jnp.zeros((14, 7)), epoch)
    if epoch == 5 or (epoch > 5 and (epoch % 5 == 0 or epoch >= 40)):
      want_d = 0.5 * (0.12 if epoch >= 40 else 0.06) * h + 0.5 * want_d
      want_T, c = mu / np.log(1 + want_d * c), c + 1
      seen.append(epoch)
    np.testing.assert_allclose(float(state["T"]), want_T if seen else 1.0, rtol=1e-5, err_msg=str(epoch))
  assert seen[:3] == [5, 10, 15] and len(seen) == 7 + 10
  # mixed sparsity: warm-up at 10 (C = 0), then T_b with probability C = (e - 1 + 1) / 49
  draws = jax.vmap(lambda k: temperature.mixed_sparsity(k, 25, epochs=50)["T"])(jax.random.split(jax.random.key(0), 4000))
  np.testing.assert_allclose(np.unique(np.asarray(draws)), [0.001, 0.01], rtol=1e-6)
  assert abs(float(jnp.mean(draws == 1e-3)) - 25 / 49) < 0.03
  warm = temperature.mixed_sparsity(jax.random.key(1), 0, epochs=50)
  assert float(warm["T"]) == 10.0 and float(warm["C"]) == 0.0


def test_small_temperature_methods_step_their_schedules_and_bypass_gradient():
  # the methods' own parts, stepped by hand (no supernet forward): per-step temperature = schedule
  spe = 3
  for name, check in (("small-temp", lambda ts: np.testing.assert_allclose(
      ts, np.repeat(temperature.pcd_temperatures(6), spe), rtol=1e-6)),
                      ("sp-darts", lambda ts: (np.testing.assert_array_equal(ts[:spe], 10.0),
                                               np.testing.assert_allclose(np.unique(ts[spe:]), [0.001, 0.01],
                                                                          rtol=1e-6)))):
    cfg = config_for(METHODS[name], "paper", epochs=6)
    p = (small_temp if name == "small-temp" else spdarts).parts(cfg, spe)
    arch = p.init_arch(jax.random.key(0))
    ts = []
    for step in range(6 * spe):
      ts.append(float(arch["temperature"]["T"]))
      arch = p.post_step(arch, jax.random.key(step), step + 1)
    check(np.asarray(ts))
    # the arch optimiser leaves the schedule state alone
    upd, _ = p.a_tx.update(jax.tree.map(jnp.ones_like, arch), p.a_tx.init(arch), arch)
    assert all(float(v) == 1.0 for v in jax.tree.leaves(upd["temperature"]))  # (masked: passed through)
  # the bypass: d/dalpha <g, p> = J_T^T g + J_1^T g where T != 1, J_1^T g alone (once) at T = 1
  a = jax.random.normal(jax.random.key(3), (5, 4)) * 0.01
  g = jax.random.normal(jax.random.key(4), (5, 4))
  dot = lambda T, bypass: jax.grad(lambda a_: jnp.sum(g * edge_weights.tempered_softmax(a_, T, bypass)))(a)
  plain = lambda T: jax.grad(lambda a_: jnp.sum(g * jax.nn.softmax(a_ / T, -1)))(a)
  np.testing.assert_allclose(dot(0.01, True), plain(0.01) + plain(1.0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dot(1.0, True), plain(1.0), rtol=1e-6)
  np.testing.assert_allclose(edge_weights.tempered_softmax(a, 0.01, True), jax.nn.softmax(a / 0.01, -1), rtol=1e-6)


def test_rounded_darts_rule_and_its_ties():
  prims = ("skip_connect", "avg_pool_3x3", "dil_conv_3x3")
  w = np.full((5, 3), 0.1)
  # node 0: inputs 0, 1 (rows 0, 1); node 1: inputs 0, 1, 2 (rows 2-4); rounded to 4 decimals
  # 0.99996, 0.99997 and 0.99998 all become 1.0, 0.99991 becomes 0.9999
  w[:, 1] = [0.99996, 0.99997, 0.99991, 0.99996, 0.99998]
  inputs = lambda **kw: [i for _, i in select.darts_top2({"normal": w, "reduce": w}, prims, **kw).normal]
  assert inputs() == [1, 0, 2, 1]  # unrounded: the strongest first
  assert inputs(decimals=4) == [0, 1, 1, 2]  # ties to the lower input (quark0, PCDEDD)
  assert inputs(decimals=4, ties="higher") == [1, 0, 2, 1]  # to the higher one (SP-DARTS)
  with pytest.raises(ValueError, match="ties"):
    select.darts_top2({"normal": w, "reduce": w}, prims, ties="random")


# ------------------------------------------------------------------------------------------ RARTS
def _rarts_toy(eta, coupling, update="gauss_seidel", steps=20):
  """RARTS's step on a softmax-weighted mixture of 3 linear classifiers (digits, 8x8x3): the
  states of every step, and the step count per batch pair."""
  ds = D.load_digits(size=8, channels=3)
  x = 0.1 * np.asarray(D.normalize(jnp.asarray(ds.train.images[:640]), ds.mean, ds.std)).reshape(640, -1)
  y = ds.train.labels[:640].astype(np.int32)

  def loss_fn(params, stats, arch, batch, key, step):
    xb, yb = batch
    p = jax.nn.softmax(arch["normal"][0])
    logits = jnp.einsum("o,bd,odk->bk", p, xb, params["W"])
    return cross_entropy(logits, yb), (stats, logits)

  cfg = config_for(METHODS["rarts"], "paper", coupling=coupling, update=update, a_weight_decay=0.0)
  w_tx = optim.weight_optimizer(eta, momentum=0.0, weight_decay=0.0, grad_clip=None)
  a_tx = optim.arch_optimizer(3e-2, weight_decay=0.0)
  step = jax.jit(rarts.make_step(loss_fn, w_tx, a_tx, eta, cfg))
  params = {"W": 0.01 * jax.random.normal(jax.random.key(0), (3, x.shape[1], 10))}
  arch = {"normal": jnp.zeros((1, 3)), "reduce": jnp.zeros((1, 3))}
  state = base.SearchState(params, {}, arch, w_tx.init(params), a_tx.init(arch), jax.random.key(0), jnp.int32(0),
                           jnp.ones((), bool), extra={"params": params, "batch_stats": {}, "w_opt": w_tx.init(params)})
  B = 16  # (steps <= 20 disjoint batch pairs)
  batches = [((x[B * i:B * i + B], y[B * i:B * i + B]), (x[320 + B * i:320 + B * i + B], y[320 + B * i:320 + B * i + B]))
             for i in range(steps)]
  states = [state]
  for tr, va in batches:
    state, _ = step(state, tr, va)
    states.append(state)
  return loss_fn, a_tx, batches, states


def test_rarts_strong_coupling_is_single_level_on_both_splits():
  # eta beta = 1: each block pulls its weights onto the other's, so w and y differ by one gradient
  # step (O(eta)); the mean follows single-level descent on L_train + L_val with alpha from both
  eta = 0.02
  loss_fn, a_tx, batches, states = _rarts_toy(eta, 1.0 / eta)
  yr, ar, a_opt = states[0].params, states[0].arch, a_tx.init(states[0].arch)
  both = lambda w, a, tr, va: loss_fn(w, {}, a, tr, None, 0)[0] + loss_fn(w, {}, a, va, None, 0)[0]
  for tr, va in batches:
    yr = jax.tree.map(lambda p, g: p - eta * g, yr, jax.grad(both)(yr, ar, tr, va))
    upd, a_opt = a_tx.update(jax.grad(both, argnums=1)(yr, ar, tr, va), a_opt, ar)
    ar = optax.apply_updates(ar, upd)
  last = states[-1]
  moved = np.linalg.norm(last.arch["normal"] - states[0].arch["normal"])
  # tolerance (the differences are O(eta) relative): after 20 steps the alphas within 3% of how far
  # they moved, y within 1% of its displacement, w within 1% of y
  assert bool(last.alive) and np.linalg.norm(last.arch["normal"] - ar["normal"]) < 0.03 * moved
  dist = lambda a, b: np.linalg.norm(np.asarray(a["W"]) - np.asarray(b["W"]))
  assert dist(last.extra["params"], yr) < 0.01 * dist(yr, states[0].params)
  assert dist(last.params, last.extra["params"]) < 0.01 * np.linalg.norm(np.asarray(yr["W"]))
  # without coupling w is plain SGD on the train batches (y on the val batches), exactly
  _, _, batches, free = _rarts_toy(eta, 0.0, update="jacobi", steps=5)
  w = free[0].params
  for k, (tr, _) in enumerate(batches):  # (at the step's alphas, before its alpha update)
    w = jax.tree.map(lambda p, g: p - eta * g, w, jax.grad(lambda w_: loss_fn(w_, {}, free[k].arch, tr, None, 0)[0])(w))
  np.testing.assert_allclose(free[-1].params["W"], w["W"], rtol=1e-5, atol=1e-7)


# -------------------------------------------- LHD's baselines on the DARTS space: DARTS-, beta-DARTS, MiLeNAS, GAEA
class _ToyNet:
  """A 'supernet' of 3 linear classifiers mixed by the normal cell's first edge (compose needs only
  init_variables and forward)."""
  primitives = ("skip_connect", "avg_pool_3x3", "dil_conv_3x3")

  def init_variables(self, key):
    return {"params": {"W": 0.1 * jax.random.normal(key, (3, 8 * 8 * 3, 10))}, "batch_stats": {}}

  def forward(self, params, stats, x, weights, train=True, key=None, **rates):
    logits = jnp.einsum("o,bd,odk->bk", weights["normal"][0, :3], x.reshape(x.shape[0], -1), params["W"])
    return logits, stats


def _toy_batches():
  ds = D.load_digits(size=8, channels=3)
  x = 0.1 * np.asarray(D.normalize(jnp.asarray(ds.train.images[:64]), ds.mean, ds.std))
  y = ds.train.labels[:64].astype(np.int32)
  return (x[:32], y[:32]), (x[32:], y[32:])


def test_milenas_alpha_descends_val_plus_train_at_the_same_weights():
  cfg = config_for(METHODS["milenas"], "paper", steps=1, primitives=_ToyNet.primitives, mixed_lambda=0.5, grad_clip=None,
                   w_momentum=0.0, w_weight_decay=0.0)
  p = darts.parts(cfg, 4)._replace(net=_ToyNet())
  m = base.compose(p, cfg, 4, order="mixed_level", mixed_lambda=cfg.mixed_lambda)
  tr, va = _toy_batches()
  s0 = m.init(jax.random.key(0))
  s1, metrics = jax.jit(m.step)(s0, tr, va)
  loss = lambda w, a, b: m.loss(w, {}, a, b, None, 0)[0]
  g_a = jax.tree.map(lambda v, t: v + 0.5 * t, jax.grad(loss, 1)(s0.params, s0.arch, va), jax.grad(loss, 1)(s0.params, s0.arch, tr))
  upd, _ = p.a_tx.update(g_a, s0.a_opt, s0.arch)
  np.testing.assert_allclose(s1.arch["normal"], optax.apply_updates(s0.arch, upd)["normal"], rtol=1e-5, atol=1e-8)
  w1 = s0.params["W"] - 0.025 * jax.grad(loss)(s0.params, s0.arch, tr)["W"]  # at the step's old alphas
  np.testing.assert_allclose(s1.params["W"], w1, rtol=1e-5, atol=1e-7)
  assert float(metrics["val_loss"]) == pytest.approx(float(loss(s0.params, s0.arch, va)), rel=1e-5)


def test_gaea_exponentiated_gradient_and_its_two_levels():
  eg = gaea.exponentiated_gradient(1.0, floor=1e-5)
  p = {"normal": jnp.array([[0.5, 0.5, 0.0]])}
  upd, _ = eg.update({"normal": jnp.array([[1.0, 0.0, 0.0]])}, eg.init(p), p)
  q = np.array([0.5 / np.e, 0.5, 1e-5])
  np.testing.assert_allclose(optax.apply_updates(p, upd)["normal"][0], q / q.sum(), rtol=1e-6)
  tr, va = _toy_batches()
  for name in ("gaea", "gaea-erm"):
    cfg = config_for(METHODS[name], "paper", steps=1, primitives=_ToyNet.primitives)
    prts = gaea.parts(cfg, 4)._replace(net=_ToyNet())
    m = base.compose(prts, cfg, 4, order="arch_then_weight" if name == "gaea" else "single_level")
    s0 = m.init(jax.random.key(0))
    np.testing.assert_allclose(s0.arch["normal"], 1 / 3)
    s1, _ = jax.jit(m.step)(s0, tr, va)
    a = np.asarray(s1.arch["normal"])
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-6)  # on the simplex
    batch = va if name == "gaea" else tr  # bilevel: the val batch; ERM: the train batch, one backward
    g = jax.grad(lambda a_: m.loss(s0.params, {}, a_, batch, None, 0)[0])(s0.arch)["normal"]
    want = np.asarray(s0.arch["normal"]) * np.exp(-0.1 * np.asarray(g))
    np.testing.assert_allclose(a, want / want.sum(-1, keepdims=True), rtol=1e-5)
  assert METHODS["gaea-erm"].config().train_portion == 1.0


def test_darts_minus_aux_skip_beta_darts_regulariser():
  # DARTS-: beta_e = (E - e) / E beside the ops (not alpha-weighted), 0 in eval; SurgeNAS: beta sum_o w_o
  assert [float(darts_minus.aux_coefficient(e, 50)) for e in (0, 1, 49)] == pytest.approx([1.0, 0.98, 0.02])
  assert float(darts_minus.aux_coefficient(25, 50, decay="cosine")) == pytest.approx(0.5)
  cfg = config_for(METHODS["darts-minus"], "paper", epochs=10, steps=1, primitives=_ToyNet.primitives)
  p = darts_minus.parts(cfg, 4)
  assert p.net.primitives[-1] == "aux_skip"
  arch = {t: jnp.zeros((2, 3)) for t in ("normal", "reduce")}
  w = p.columns(p.mix(arch, None, 3 * 4), 3 * 4)  # epoch 3: beta 0.7
  np.testing.assert_allclose(w["normal"], np.c_[np.full((2, 3), 1 / 3), np.full((2, 1), 0.7)], rtol=1e-6)
  m = METHODS["darts-minus"](cfg, 4).stage(0, None).method  # (compose joins the column to every map)
  assert float(m.eval_weights(arch)["normal"][:, -1].max()) == 0.0
  np.testing.assert_allclose(m.weights(arch, None, 12)["normal"], w["normal"])
  pw = darts_minus.parts(cfg, 4, weighted=True)
  ws = pw.columns(pw.mix({t: jnp.zeros((2, 3)) for t in ("normal", "reduce")}, None, 12), 12)
  np.testing.assert_allclose(ws["normal"][:, -1], 0.7, rtol=1e-6)  # (per-edge softmax: sum_o w_o = 1)
  with pytest.raises(ValueError, match="aux_skip"):
    config_for(METHODS["darts-minus"], "paper", primitives=("aux_skip", "skip_connect"))
  # beta-DARTS: R = mean logsumexp over edges, d R / d alpha = softmax / edges; lambda_e = 0.5 e
  a = {t: jax.random.normal(jax.random.key(i), (5, 4)) for i, t in enumerate(("normal", "reduce"))}
  g = jax.grad(beta_darts.beta_decay)(a)
  for t in a:
    np.testing.assert_allclose(g[t], jax.nn.softmax(a[t], -1) / 10, rtol=1e-5)
  for detached, scale in ((False, 1.0), (True, 0.0)):
    bcfg = config_for(METHODS["beta-darts"], "paper", beta_detached=detached)
    method = METHODS["beta-darts"](bcfg, 4)  # (it builds)
    # the penalty enters the alpha loss: lambda at step 8 (epoch 2) = 1.0
    pen = jax.grad(lambda a_: beta_darts.penalty(bcfg, 4)(a_, None, jnp.int32(8)))(a)
    np.testing.assert_allclose(pen["normal"], scale * 1.0 * jax.nn.softmax(a["normal"], -1) / 10, rtol=1e-5, atol=1e-9)
    assert method.num_stages == 1



# --------------------------------------------------------------------------------------- SD-DARTS
def test_sd_darts_without_distillation_is_darts_and_its_buffer_holds_the_named_steps():
  tr, va = _toy_batches()
  kw = dict(steps=1, primitives=_ToyNet.primitives)
  sd_cfg = config_for(METHODS["sd-darts"], "paper", kd_weight=0.0, teachers=3, teacher_spacing=2, **kw)
  dcfg = config_for(METHODS["darts"], "paper", order="first", **kw)
  sd = sddarts.method(darts.parts(sd_cfg, 4)._replace(net=_ToyNet()), sd_cfg, 4)
  dm = base.compose(darts.parts(dcfg, 4)._replace(net=_ToyNet()), dcfg, 4)
  s_sd, s_d = sd.init(jax.random.key(0)), dm.init(jax.random.key(0))
  step_sd, step_d = jax.jit(sd.step), jax.jit(dm.step)
  history = []
  for t in range(9):
    history.append(s_sd.params["W"])
    batches = ((tr[0][t % 2 * 16:][:16], tr[1][t % 2 * 16:][:16]), (va[0][t % 2 * 16:][:16], va[1][t % 2 * 16:][:16]))
    s_sd, m_sd = step_sd(s_sd, *batches)
    s_d, _ = step_d(s_d, *batches)
  # kd_weight 0: DARTS first order, bit for bit
  np.testing.assert_array_equal(s_sd.params["W"], s_d.params["W"])
  np.testing.assert_array_equal(s_sd.arch["normal"], s_d.arch["normal"])
  # spacing 2, 3 slots: after 9 steps the snapshots of steps 8, 4 and 6 (the state before those steps)
  buf = s_sd.extra
  assert np.asarray(buf["steps"]).tolist() == [6, 8, 4] and bool(np.all(buf["valid"]))
  for slot, t in enumerate(np.asarray(buf["steps"])):
    np.testing.assert_array_equal(buf["params"]["W"][slot], history[t])
  # the vote and the divergence
  logits = jnp.array([[[2.0, 0.0]], [[0.0, 1.0]], [[5.0, 0.0]]])  # (teachers, batch, classes)
  valid = jnp.array([True, True, False])
  np.testing.assert_allclose(sddarts.vote(logits, valid, 1.0), (jax.nn.softmax(logits[0]) + jax.nn.softmax(logits[1])) / 2)
  np.testing.assert_allclose(sddarts.vote(logits, valid, 1.0, "majority"), [[0.5, 0.5]])
  q = jnp.array([[0.25, 0.75]])
  np.testing.assert_allclose(sddarts.distillation(q, jnp.log(q), 1.0), 0.0, atol=1e-7)
  want = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  np.testing.assert_allclose(sddarts.distillation(q, jnp.zeros((1, 2)), 1.0), want, rtol=1e-6)
  # with distillation the weights move otherwise, once a teacher exists (not at the first step)
  kd_cfg = sd_cfg.replace(kd_weight=1.0)
  kd = sddarts.method(darts.parts(kd_cfg, 4)._replace(net=_ToyNet()), kd_cfg, 4)
  s1, m1 = jax.jit(kd.step)(kd.init(jax.random.key(0)), (tr[0][:16], tr[1][:16]), (va[0][:16], va[1][:16]))
  assert float(m1["kd_loss"]) == 0.0
  _, m2 = jax.jit(kd.step)(s1, (tr[0][16:], tr[1][16:]), (va[0][16:], va[1][16:]))
  assert float(m2["kd_loss"]) > 0.0
