"""Every registered search method on one table: init -> jitted step -> derive on a tiny supernet,
two seeds vmapped equal to each seed alone, and a short search on digits lowers the validation
loss. One compiled vmapped step and one single-seed step per method serve all the assertions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
import jnas.data as D
from jnas.search import METHODS, base, config_for
from jnas.search.run import EvalData

# avg pool, not max pool: the max-pool gradient jumps where two taps tie, and rounding differences
# between a vmapped and a single-seed program move such ties (the seed comparison below)
OPS = ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3")
TINY = dict(C=4, layers=3, steps=1, primitives=OPS, batch_size=32, epochs=4, conv_impl="xla", w_lr=0.1,
            w_lr_min=0.1)
SPE = 4  # steps per epoch: 16 steps in all
# Settings that make each method fit the tiny net and act within 16 steps (warm-up 1 epoch).
PER_METHOD = {
    "pdarts": dict(warmup_epochs=1, num_to_keep=(3, 2, 1), add_layers=(0, 1, 2)),
    "pcdarts": dict(warmup_epochs=1, partial_channels=2),
    "drnas": dict(C=12, primitives=OPS[1:], warmup_epochs=1, num_keeps=(3, 2), w_lr=0.025, w_lr_min=0.025),
    # (GDAS's single path learns within 16 steps, and SDARTS-RS's seeds agree to rounding, on 2 nodes)
    "gdas": dict(tau_max=2.0, tau_min=0.5, steps=2),
    "sdarts-rs": dict(steps=2),
    "gdas-frc": dict(C=8, tau_max=2.0, tau_min=0.5),
    "snas": dict(image_size=8),
    "rsws": dict(archs_per_round=8, rank_batches=1, top_k=2),
    # R-DARTS's deltas on DARTS do not depend on its order: the cheaper first-order compile
    "darts-es": dict(order="first"),
    "darts-ada": dict(order="first"),
    "rdarts-l2": dict(order="first"),
    "rdarts-dp": dict(order="first", drop_path=0.3),
    "ss-darts": dict(primitives=OPS[1:], stop_op="dil_conv_3x3"),  # (a 7-op style search: no ``none``)
    "stacnas": dict(groups=(("avg_pool_3x3", "avg_pool_3x3", "none"), ("skip_connect", "skip_connect", "none"),
                            ("dil_conv_3x3", "dil_conv_3x3", "none")), layers2=3),
    "cnas": dict(primitives=("none", "skip_connect", "cweight_com", "avg_pool_3x3")),  # (the SE op at C=4)
    "darts-pt": dict(primitives=OPS[1:]),
    "small-temp": dict(primitives=OPS[1:]),
    "sp-darts": dict(primitives=OPS[1:]),
    "surgenas": dict(batch_size=32),
}


# Methods whose step is another table method's compose program with other constants or one more
# piece (DARTS's parts: R-DARTS's L2, early stop and ADA (a traced weight decay), SS-DARTS, DARTS-PT,
# the small-temperature methods (a temperature state), DARTS- (an extra weight column), beta-DARTS
# (a penalty); SNAS's single level: SurgeNAS; GAEA's parts: its ERM variant; MANAS's bandit order:
# MANAS-LS): their seed 1 is compared with seed 1 batched with itself in the same compiled program
# (no second compile); the program they resemble was compared with a single-seed program in its
# own row.
SAME_PROGRAM_AS = {"darts-es": "darts", "rdarts-l2": "darts", "ss-darts": "darts", "darts-pt": "darts",
                   "manas-ls": "manas", "darts-ada": "darts", "small-temp": "darts", "sp-darts": "darts",
                   "darts-minus": "darts", "beta-darts": "darts", "surgenas": "snas", "gaea-erm": "gaea"}


# The supernet methods of the DARTS space; ENAS, NAO and NSGA-Net search other spaces
# (tests/test_other_spaces.py).
OTHER_SPACES = ("enas", "nao", "nsganet")
TABLE = [n for n in METHODS if n not in OTHER_SPACES]


def tiny_config(name, **kw):
  return config_for(METHODS[name], "paper", **{**TINY, **PER_METHOD.get(name, {}), **kw})


@pytest.fixture(scope="module")
def digits():
  ds = D.load_digits(size=8, channels=3)
  x = np.asarray(D.normalize(jnp.asarray(ds.train.images[:1024]), ds.mean, ds.std))
  y = ds.train.labels[:1024].astype(np.int32)
  return ds, x, y


def _batches(x, y, step, B=32):
  """Train and val batches of step ``step`` (disjoint halves of the data; the same for all seeds)."""
  n = len(y) // 2
  i = (step * B) % (n - B)
  return (x[i:i + B], y[i:i + B]), (x[n + i:n + i + B], y[n + i:n + i + B])


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def make_trained(names):
  """The module's ``trained`` fixture over ``names`` (the table is split over two files, which
  pytest-xdist runs in parallel: ``tests/test_methods_odd.py`` has every other method)."""
  @pytest.fixture(scope="module", params=names)
  def trained(request, digits, fast_compile):
    return _train(request.param, digits)
  return trained


def _train(name, digits):
  _, x, y = digits
  config = tiny_config(name)
  method = METHODS[name](config, SPE).stage(0, None).method
  keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
  init = jax.jit(jax.vmap(method.init))
  step = jax.jit(jax.vmap(method.step))
  state0 = init(keys)
  state, metrics, early = state0, [], None
  compare_at = (SPE if config.warmup_epochs else 0) + 1  # the alphas have moved twice
  for t in range(4 * SPE):
    tr, va = _batches(x, y, t)
    state, m = step(state, _stack([tr, tr]), _stack([va, va]))
    metrics.append(jax.device_get(m))
    if t == compare_at:
      early = (t + 1, jax.device_get(state))
  if name in SAME_PROGRAM_AS:  # seed 1 beside itself, in the program above
    twin = init(jnp.stack([jax.random.key(1), jax.random.key(1)]))
    for t in range(early[0]):
      tr, va = _batches(x, y, t)
      twin, _ = step(twin, _stack([tr, tr]), _stack([va, va]))
    early = early + (jax.tree.map(lambda a: a[0], jax.device_get(twin)),)
  return name, config, method, state0, state, metrics, early



trained = make_trained(TABLE[0::2])


def _val_loss(method, state, x, y, name):
  """Train-mode (batch statistics) cross-entropy on held-out digits at the method's eval weights
  (methods that train the shared weights on sampled architectures, random search and MANAS: the
  mean over 8 architectures they sample; MANAS's greedy architecture may be one it has hardly
  trained yet)."""
  def loss(w):
    logits, _ = method.net.forward(state.params, state.batch_stats, x, w, train=True)
    return jnas.train.cross_entropy(logits, y)
  if name in ("rsws", "manas", "manas-ls"):
    return jnp.mean(jnp.stack([loss(method.weights(state.arch, jax.random.key(k), 0)) for k in range(8)]))
  return loss(method.eval_weights(state.arch))


def test_step_metrics_derive_and_learning(trained, digits):
  name, config, method, state0, state, metrics, _ = trained
  ds, x, y = digits
  last = metrics[-1]
  for k in ("train_loss", "train_acc", "lr", "alive"):
    assert k in last, (name, k)
  assert all(np.all(np.isfinite(m["train_loss"])) for m in metrics) and np.all(last["alive"])
  assert np.all(np.asarray(state.step) == 4 * SPE)
  if jax.tree.leaves(state0.arch):  # the architecture parameters moved
    assert not np.allclose(jax.tree.leaves(state.arch)[0], jax.tree.leaves(state0.arch)[0]), name
  one = lambda st, s: jax.tree.map(lambda a: a[s], st)
  data = EvalData(jnp.asarray(ds.train.images[512:768]), jnp.asarray(ds.train.labels[512:768].astype(np.int32)),
                  tuple(ds.mean), tuple(ds.std), 32)
  for s in (0, 1):
    g = method.derive(one(state, s), data)
    assert isinstance(g, jnas.Genotype), (name, g)
    assert g.ops() <= set(config.primitives)
  # learning: the validation loss at the method's eval weights fell
  xv, yv = x[768:1024], y[768:1024]
  loss = jax.jit(lambda st: jax.vmap(lambda s_: _val_loss(method, s_, xv, yv, name))(st))
  before, after = np.asarray(loss(state0)), np.asarray(loss(state))
  assert np.all(after < before), (name, before, after)


def test_two_seeds_vmapped_equal_each_seed_alone(trained, digits):
  name, config, method, state0, state, _, early = trained
  _, x, y = digits
  if name in SAME_PROGRAM_AS:
    steps, early, alone = early
  else:
    steps, early = early
    step = jax.jit(method.step)
    alone = method.init(jax.random.key(1))
    for t in range(steps):
      tr, va = _batches(x, y, t)
      alone, _ = step(alone, tr, va)
  batched = jax.tree.map(lambda a: a[1], early)
  # float32 reductions run in another order under vmap: equal to rounding (compared before
  # Adam's sign-like first steps can amplify a rounding difference of a near-zero gradient)
  np.testing.assert_array_equal(alone.step, batched.step)
  for a, b in zip(jax.tree.leaves(alone.arch), jax.tree.leaves(batched.arch)):
    np.testing.assert_allclose(a, b, rtol=0, atol=3e-5, err_msg=name)
  for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(batched.params)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=name)


def test_registry_and_presets():
  for name, spec in METHODS.items():
    cfg = spec.config()
    assert isinstance(cfg, base.SearchConfig)
    assert spec.preset("paper") == {}
    cpu = config_for(spec, "cpu")
    assert cpu.epochs <= 3 and cpu.C <= 16, name  # (CNAS: its shuffle op needs C % 16 == 0)
    search = spec(cfg, steps_per_epoch=10)
    assert search.num_stages >= 1 and search.name == name
  with pytest.raises(ValueError, match="has no setting"):
    config_for(METHODS["darts"], "paper", tau=1.0)
  with pytest.raises(ValueError, match="takes a DartsConfig"):
    METHODS["darts"](METHODS["gdas"].config())
