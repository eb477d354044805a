"""The ENAS micro-space controller (Pham et al., ICML 2018: "Efficient Neural Architecture Search
via Parameter Sharing"), as melodyguan/enas ``src/cifar10/micro_controller.py`` runs it with
NAS-Benchmark's published search command (spec ``other_spaces.md`` §1.5).

Sampler. A stacked LSTM without biases, gates (i, f, o, g) [ENAS ``src/common_ops.py`` ``lstm``]:

  [i, f, o, g] = [x, h_{t-1}] W,  c_t = s(i) tanh(g) + s(f) c_{t-1},  h_t = s(o) tanh(c_t)

(layer l > 0 reads layer l-1's new h; "h" below is the top layer's). Per cell (normal, then
reduce; the reduce cell starts from the normal cell's final LSTM state, anchors reset):
  - two warm-up steps on the go embedding g_emb give keys k_0, k_1 = W_1 h for the cell inputs
    0 and 1, whose anchors (the next LSTM input when chosen) are zero vectors;
  - node j (state index p = j+2): 2 index steps, then 2 op steps, then 1 step that stores the
    node's anchor a_p = h and key k_p = W_1 h; the input then resets to g_emb.
      index:  z_q = v^T tanh(k_q + W_2 h),  q < p   (masked softmax over B+2 slots)
              z <- C tanh(z / T);  next input a_q
      op:     z = W_soft h + b_soft;  z <- (C / r) tanh(z / T) (+ b_nl in the normal cell);
              next input w_emb[op]
    with C = tanh_constant, r = op_tanh_reduce, T = temperature (each skipped when None) and
    b_nl = ``b_soft_no_learn`` (fixed, normal cell only). Each decision a ~ softmax(z).
  - log pi(arc) = sum of the 4 B 2 decisions' log softmax(z)[a];  H = sum of the per-step
    entropies -sum_a p_a log p_a (stop-gradient).

REINFORCE, per sample (the baseline update is sequenced before the loss, as ENAS's control
dependency):

  R = acc + w_H sg(H),   b <- b - (1 - bl_dec)(b - R)  (b_0 = 0),   L = -log pi(arc) sg(R - b)

``train_controller``: ``train_steps`` Adam updates, each on the mean gradient of
``num_aggregate`` samples (ENAS's ``SyncReplicasOptimizer(replicas_to_aggregate=10,
total_num_replicas=1)``), all drawn with the same parameters; the baseline moves with every
sample. Adam: beta_1 = 0, eps = 1e-3, constant lr, no clipping, no L2 [ENAS ``src/utils.py``].

Defaults are NB's command (= ENAS ``scripts/cifar10_micro_search.sh``): LSTM 1 x 64 (``main.py``
hard-codes them; the class defaults are 2 x 32), C 1.10, r 2.5, no temperature, w_H 1e-4, lr
0.0035, 30 x 10 samples per epoch, init U[-0.1, 0.1] except b_soft = [10, 10, 0, 0, 0]
(learnable), b_nl = [0.25, 0.25, -0.25, -0.25, -0.25]. A consequence [inferred from code]: with
b_soft = 10 for ops 0/1 (sep convs), tanh is saturated there (gradient ~1e-8), so those two op
logits stay at the bound C / r = 0.44 and no other op can ever get more than 0.26 of a step's
mass in the reduce cell (0.20 in the normal cell), whatever the other parameters.

Where the sources differ:
  - the paper (via Yang et al., App. A.1) gives controller lr 0.00035 and entropy weight 0.1; the
    code's command uses 0.0035 and 1e-4 (the defaults here). Its "temperature 2.5" is the code's
    ``op_tanh_reduce``, not a logit temperature;
  - ENAS-PT (NB's Sport8/MIT67/Flowers102 runs) uses temperature 5.0 on index and op logits,
    Adam betas (0.1, 0.999), percent accuracy as the reward, a baseline initialised to the first
    reward, no aggregation, and ``nn.LSTMCell`` (with biases): not reproduced by the defaults;
  - Adam's epsilon: TF adds eps to sqrt(v) before bias correction (so eps_eff =
    eps / sqrt(1 - beta_2^t)), optax after; ``controller_optimizer`` uses optax's form.

Arc ("arc"): ``{"inputs": int32 (2, B, 2), "ops": int32 (2, B, 2)}``; axis 0 cell (0 normal,
1 reduce), axis 1 node j (state j+2), axis 2 the node's two inputs; ``inputs[c, j, k]`` in 0..j+1,
``ops[c, j, k]`` in 0..num_ops-1. Its text is ENAS's 4 B 2 ints, per node
``index_1 op_1 index_2 op_2``, normal then reduce.

Implementation: both cells run as one ``lax.scan`` over the sampler's 2 (2 + 5 B) LSTM steps
(warm-up, index, op and anchor-storing steps share one body, selected by a static per-step table);
the index softmax over q < p is a masked softmax over B + 2 slots; sampling is Gumbel-max with
the noise drawn before the scan (the same law as ``jax.random.categorical``). Everything is pure,
jit-able and vmap-able over a leading seed axis (params, keys, states).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
  "ControllerConfig",
  "init_params",
  "init_train_state",
  "arc_to_string",
  "arc_from_string",
  "validate_arc",
  "sample",
  "log_prob",
  "reward",
  "update_baseline",
  "reinforce_loss",
  "controller_optimizer",
  "controller_step",
  "train_controller",
]

Params = dict[str, jax.Array]
Arc = dict[str, Any]

_NEG = -1e9  # logit of a masked index slot: softmax weight exactly 0, finite log-probability


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
  """ENAS micro controller settings; defaults = NB's command (see the module docstring).

  ``temperature`` is a logit temperature (None: not applied, as NB; ENAS-PT uses 5.0).
  ``entropy_weight`` None means no entropy bonus (ENAS ``main.py``'s flag default); the paper
  text says 0.1. ``lr`` 0.0035 is the code's; the paper text says 0.00035.
  ``normal_op_bias`` is ENAS's fixed ``b_soft_no_learn`` (normal-cell op logits only);
  ``b_soft_init`` the learnable op bias's initial value; both have ``num_ops`` entries.
  """

  lstm_size: int = 64
  lstm_num_layers: int = 1
  num_nodes: int = 5
  num_ops: int = 5
  tanh_constant: Optional[float] = 1.10
  op_tanh_reduce: float = 2.5
  temperature: Optional[float] = None
  entropy_weight: Optional[float] = 1e-4
  bl_dec: float = 0.99
  lr: float = 0.0035
  adam_b1: float = 0.0
  adam_eps: float = 1e-3
  train_steps: int = 30
  num_aggregate: int = 10
  init_range: float = 0.1
  normal_op_bias: tuple[float, ...] = (0.25, 0.25, -0.25, -0.25, -0.25)
  b_soft_init: tuple[float, ...] = (10.0, 10.0, 0.0, 0.0, 0.0)

  def __post_init__(self):
    for name in ("lstm_size", "lstm_num_layers", "num_nodes", "num_ops", "train_steps", "num_aggregate"):
      v = getattr(self, name)
      if not _is_int(v) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    for name in ("tanh_constant", "temperature"):
      v = getattr(self, name)
      if v is not None and (not _is_real(v) or not v > 0 or not math.isfinite(v)):
        raise ValueError(f"{name} must be None or a finite number > 0, got {v!r}")
    for name in ("op_tanh_reduce", "lr", "adam_eps", "init_range"):
      v = getattr(self, name)
      if not _is_real(v) or not v > 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    w = self.entropy_weight
    if w is not None and (not _is_real(w) or not w >= 0 or not math.isfinite(w)):
      raise ValueError(f"entropy_weight must be None or a finite number >= 0, got {w!r}")
    if not _is_real(self.bl_dec) or not 0.0 <= self.bl_dec <= 1.0:
      raise ValueError(f"bl_dec must be in [0, 1], got {self.bl_dec!r}")
    if not _is_real(self.adam_b1) or not 0.0 <= self.adam_b1 < 1.0:
      raise ValueError(f"adam_b1 must be in [0, 1), got {self.adam_b1!r}")
    for name in ("normal_op_bias", "b_soft_init"):
      v = getattr(self, name)
      try:
        t = tuple(float(x) for x in v)
      except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of {self.num_ops} numbers, got {v!r}") from None
      if len(t) != self.num_ops:
        raise ValueError(f"{name} must have num_ops={self.num_ops} entries, got {len(t)}: {v!r}")
      if not all(math.isfinite(x) for x in t):
        raise ValueError(f"{name} must be finite, got {v!r}")
      object.__setattr__(self, name, t)  # a hashable tuple: the config can be a static jit argument


# --- parameters --------------------------------------------------------------------------------


def init_params(key: jax.Array, config: ControllerConfig) -> Params:
  """Controller parameters: all U[-init_range, init_range] except ``b_soft`` = ``b_soft_init``.

  Shapes (H = lstm_size, L = lstm_num_layers, K = num_ops): ``w_lstm`` (L, 2H, 4H) (rows: input,
  then previous h; columns: gates i, f, o, g), ``g_emb`` (H,), ``w_emb`` (K, H), ``w_soft`` (H, K),
  ``b_soft`` (K,), ``w_attn_1``, ``w_attn_2`` (H, H), ``v_attn`` (H,).
  """
  h, nl, k = config.lstm_size, config.lstm_num_layers, config.num_ops
  shapes = {
    "w_lstm": (nl, 2 * h, 4 * h),
    "g_emb": (h,),
    "w_emb": (k, h),
    "w_soft": (h, k),
    "w_attn_1": (h, h),
    "w_attn_2": (h, h),
    "v_attn": (h,),
  }
  # One draw for all of them (one threefry kernel instead of one per parameter: faster compiles).
  sizes = [math.prod(s) for s in shapes.values()]
  r = config.init_range
  flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -r, r)
  offsets = np.cumsum([0] + sizes)
  params = {name: flat[o:o + n].reshape(shape)
            for (name, shape), o, n in zip(shapes.items(), offsets, sizes)}
  params["b_soft"] = jnp.asarray(config.b_soft_init, jnp.float32)
  return params


def init_train_state(key: jax.Array, config: ControllerConfig):
  """(params, Adam state, baseline b_0 = 0) for ``train_controller``."""
  params = init_params(key, config)
  return params, controller_optimizer(config).init(params), jnp.zeros((), jnp.float32)


# --- arc text ----------------------------------------------------------------------------------


def validate_arc(arc: Arc, num_ops: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Check an arc's shapes and ranges on the host; returns (inputs, ops) as int32 numpy arrays."""
  if not isinstance(arc, dict) or set(arc) != {"inputs", "ops"}:
    raise ValueError(f"an arc is a dict with keys 'inputs' and 'ops', got {type(arc).__name__} "
                     f"{sorted(arc) if isinstance(arc, dict) else ''}")
  inputs, ops = np.asarray(arc["inputs"]), np.asarray(arc["ops"])
  for name, a in (("inputs", inputs), ("ops", ops)):
    if a.ndim != 3 or a.shape[0] != 2 or a.shape[2] != 2 or a.shape[1] < 1:
      raise ValueError(f"arc['{name}'] must have shape (2, B, 2), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"arc['{name}'] must be integer, got {a.dtype}")
  if inputs.shape != ops.shape:
    raise ValueError(f"arc inputs {inputs.shape} and ops {ops.shape} differ in shape")
  hi = np.arange(inputs.shape[1])[None, :, None] + 1  # node j reads states 0..j+1
  bad = np.argwhere((inputs < 0) | (inputs > hi))
  if bad.size:
    c, j, k = bad[0]
    raise ValueError(f"arc inputs[{c}, {j}, {k}] = {inputs[c, j, k]} out of range 0..{j + 1}")
  top = num_ops - 1 if num_ops is not None else None
  bad = np.argwhere((ops < 0) | ((ops > top) if top is not None else False))
  if bad.size:
    c, j, k = bad[0]
    rng = f"0..{top}" if top is not None else ">= 0"
    raise ValueError(f"arc ops[{c}, {j}, {k}] = {ops[c, j, k]} out of range {rng}")
  return inputs.astype(np.int32), ops.astype(np.int32)


def arc_to_string(arc: Arc, num_ops: Optional[int] = None) -> str:
  """ENAS's arc text: per node ``index_1 op_1 index_2 op_2``, normal cell then reduce cell."""
  inputs, ops = validate_arc(arc, num_ops)
  seq = np.stack([inputs[..., 0], ops[..., 0], inputs[..., 1], ops[..., 1]], axis=-1)
  return " ".join(str(int(x)) for x in seq.reshape(-1))


def arc_from_string(text: str, num_nodes: int = 5, num_ops: int = 5) -> Arc:
  """Parse ENAS's arc text (4 B 2 whitespace-separated ints) into an arc of int32 numpy arrays."""
  if not isinstance(text, str):
    raise ValueError(f"arc text must be a str, got {type(text).__name__}")
  if not _is_int(num_nodes) or num_nodes < 1:
    raise ValueError(f"num_nodes must be an integer >= 1, got {num_nodes!r}")
  tokens = text.split()
  want = 2 * 4 * num_nodes
  if len(tokens) != want:
    raise ValueError(f"arc text must have {want} integers for num_nodes={num_nodes} "
                     f"(2 cells x {num_nodes} nodes x 'index_1 op_1 index_2 op_2'), got {len(tokens)}")
  try:
    vals = [int(t) for t in tokens]
  except ValueError:
    bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
    raise ValueError(f"arc text has a non-integer token {bad!r}") from None
  seq = np.asarray(vals, np.int64).reshape(2, num_nodes, 4)
  arc = {"inputs": seq[..., [0, 2]], "ops": seq[..., [1, 3]]}
  inputs, ops = validate_arc(arc, num_ops)
  return {"inputs": inputs, "ops": ops}


# --- the sampler -------------------------------------------------------------------------------


def _lstm(x, c, h, w_lstm):
  """ENAS ``stack_lstm`` of ``lstm``: no biases, gates i, f, o, g; c, h are (L, H)."""
  new_c, new_h = [], []
  inp = x
  for layer in range(w_lstm.shape[0]):
    z = jnp.concatenate([inp, h[layer]]) @ w_lstm[layer]
    i, f, o, g = jnp.split(z, 4)
    cl = jax.nn.sigmoid(i) * jnp.tanh(g) + jax.nn.sigmoid(f) * c[layer]
    hl = jax.nn.sigmoid(o) * jnp.tanh(cl)
    new_c.append(cl)
    new_h.append(hl)
    inp = hl
  return jnp.stack(new_c), jnp.stack(new_h)


def _squash(z, temperature, constant):
  if temperature is not None:
    z = z / temperature
  if constant is not None:
    z = constant * jnp.tanh(z)
  return z


def _decide(logits, gumbel, forced):
  """One categorical decision: sampled (Gumbel-max, as ``jax.random.categorical``) or
  teacher-forced; its log-probability and entropy."""
  logp = jax.nn.log_softmax(logits)
  a = jnp.argmax(logits + gumbel).astype(jnp.int32) if forced is None else forced
  ent = -jnp.sum(jnp.exp(logp) * logp)
  return a, logp[a], jax.lax.stop_gradient(ent)


_WARM, _INDEX, _OP, _STORE = 0, 1, 2, 3


def _schedule(num_nodes: int):
  """The sampler's LSTM steps, in order: per cell 2 warm-ups, then per node (state p = j+2)
  index_1, index_2, op_1, op_2 and the anchor-storing step. Returns per-step numpy tables
  (kind, cell, slot = the state index written or attended up to, first = a cell's first step)
  and ``dec`` (2, B, 4): the step of each decision (idx1, idx2, op1, op2)."""
  kind, cell, slot, first = [], [], [], []
  dec = np.zeros((2, num_nodes, 4), np.int32)
  for c in range(2):
    for s in range(2):
      kind.append(_WARM), cell.append(c), slot.append(s), first.append(s == 0)
    for j in range(num_nodes):
      for i, k in enumerate((_INDEX, _INDEX, _OP, _OP, _STORE)):
        if k != _STORE:
          dec[c, j, i] = len(kind)
        kind.append(k), cell.append(c), slot.append(j + 2), first.append(False)
  tables = {"kind": np.asarray(kind, np.int32), "cell": np.asarray(cell, np.int32),
            "slot": np.asarray(slot, np.int32), "first": np.asarray(first)}
  return tables, dec


def _unroll(params: Params, config: ControllerConfig, key, forced):
  """Both cells' sampler as one scan over its 2 (2 + 5 B) LSTM steps (one small body, so it
  compiles fast): sampled with ``key`` or teacher-forced on ``forced`` (decisions (2, B, 4):
  idx1, idx2, op1, op2). The Gumbel noise of all steps is drawn up front; steps that make no
  decision draw (and discard) one too."""
  n, hsz, k_ops = config.num_nodes, config.lstm_size, config.num_ops
  c_op = None if config.tanh_constant is None else config.tanh_constant / config.op_tanh_reduce
  temp = config.temperature
  tables, dec_steps = _schedule(n)
  steps = len(tables["kind"])
  width = max(n + 2, k_ops)  # index and op logits share one padded vector
  cell_bias = np.stack([np.asarray(config.normal_op_bias, np.float32), np.zeros(k_ops, np.float32)])
  xs = dict(tables, bias=cell_bias[tables["cell"]])
  if forced is None:
    xs["gumbel"] = jax.random.gumbel(key, (steps, width), jnp.float32)
  else:
    xs["forced"] = jnp.zeros((steps,), jnp.int32).at[dec_steps.reshape(-1)].set(forced.reshape(-1))
  slots = jnp.arange(n + 2)

  def pad(z):
    return jnp.concatenate([z, jnp.full((width - z.shape[0],), _NEG, z.dtype)])

  def step(carry, x_t):
    c, h, x, anchors, keys_w1 = carry
    kind, slot = x_t["kind"], x_t["slot"]
    anchors = jnp.where(x_t["first"], 0.0, anchors)
    keys_w1 = jnp.where(x_t["first"], 0.0, keys_w1)
    c, h = _lstm(x, c, h, params["w_lstm"])
    top = h[-1]
    q = jnp.tanh(keys_w1 + (top @ params["w_attn_2"])[None, :]) @ params["v_attn"]
    z_idx = jnp.where(slots < slot, _squash(q, temp, config.tanh_constant), _NEG)
    z_op = _squash(top @ params["w_soft"] + params["b_soft"], temp, c_op) + x_t["bias"]
    z = jnp.where(kind == _INDEX, pad(z_idx), pad(z_op))
    a, lp, ent = _decide(z, x_t.get("gumbel"), x_t.get("forced"))
    is_dec = (kind == _INDEX) | (kind == _OP)
    key_t = top @ params["w_attn_1"]
    writes_key = (kind == _WARM) | (kind == _STORE)
    keys_w1 = keys_w1.at[slot].set(jnp.where(writes_key, key_t, keys_w1[slot]))
    anchors = anchors.at[slot].set(jnp.where(kind == _STORE, top, anchors[slot]))
    x = jnp.where(kind == _INDEX, anchors[jnp.minimum(a, n + 1)],
                  jnp.where(kind == _OP, params["w_emb"][jnp.minimum(a, k_ops - 1)], params["g_emb"]))
    return (c, h, x, anchors, keys_w1), (a, jnp.where(is_dec, lp, 0.0), jnp.where(is_dec, ent, 0.0))

  zeros = jnp.zeros((config.lstm_num_layers, hsz), jnp.float32)
  table = jnp.zeros((n + 2, hsz), jnp.float32)
  carry = (zeros, zeros, params["g_emb"], table, table)
  _, (a, lp, ent) = jax.lax.scan(step, carry, xs)
  dec = a[dec_steps]
  arc = {"inputs": dec[..., :2], "ops": dec[..., 2:]}
  return arc, jnp.sum(lp), jnp.sum(ent)


def sample(params: Params, key: jax.Array, config: ControllerConfig):
  """Sample an arc: (arc, log pi(arc), H) with H the summed per-step entropy (stop-gradient)."""
  return _unroll(params, config, key, None)


def log_prob(params: Params, arc: Arc, config: ControllerConfig):
  """(log pi(arc), H): the sampler teacher-forced on ``arc`` (differentiable in ``params``).

  The arc is not range-checked here (use ``validate_arc``); an index beyond its node's range
  scores about -1e9.
  """
  forced = jnp.concatenate([jnp.asarray(arc["inputs"], jnp.int32),
                            jnp.asarray(arc["ops"], jnp.int32)], axis=-1)
  _, lp, ent = _unroll(params, config, None, forced)
  return lp, ent


# --- REINFORCE ---------------------------------------------------------------------------------


def reward(accuracy, entropy, config: ControllerConfig):
  """R = accuracy + entropy_weight sg(H) (accuracy as a fraction, as ENAS-TF)."""
  accuracy = jnp.asarray(accuracy, jnp.float32)
  if config.entropy_weight is None:
    return accuracy
  return accuracy + config.entropy_weight * jax.lax.stop_gradient(entropy)


def update_baseline(baseline, reward_value, bl_dec):
  """b <- b - (1 - bl_dec)(b - R) (ENAS's moving-average baseline)."""
  return baseline - (1.0 - bl_dec) * (baseline - reward_value)


def reinforce_loss(params: Params, arc: Arc, reward_value, baseline, config: ControllerConfig):
  """L = -log pi(arc) sg(R - b); R and b are constants."""
  lp, _ = log_prob(params, arc, config)
  return -lp * jax.lax.stop_gradient(reward_value - baseline)


def controller_optimizer(config: ControllerConfig) -> optax.GradientTransformation:
  """optax Adam(lr, b1=adam_b1, b2=0.999, eps=adam_eps); no clipping, no L2, constant lr."""
  return optax.adam(config.lr, b1=config.adam_b1, b2=0.999, eps=config.adam_eps)


def controller_step(params: Params, opt_state, baseline, key: jax.Array,
                    reward_fn: Callable[[Arc, jax.Array], jax.Array], config: ControllerConfig):
  """One Adam update on the mean REINFORCE gradient of ``num_aggregate`` samples.

  Keys: ``jax.random.split(key, 2 num_aggregate)``; sample k takes entries 2k (arc) and 2k+1
  (reward_fn). Per sample, in order: arc ~ pi, acc = reward_fn(arc, reward key), R = reward(acc, H),
  b <- update_baseline(b, R), loss -log pi(arc)(R - b) with that new b.
  Returns (params, opt_state, baseline, metrics) with metrics the means of reward, accuracy and
  entropy over the samples and the baseline after them.
  """
  baseline = jnp.asarray(baseline, jnp.float32)

  def one(b, k):
    k_arc, k_rew = k[0], k[1]
    arc, _, ent = sample(params, k_arc, config)
    acc = jnp.asarray(reward_fn(arc, k_rew), jnp.float32)
    r = reward(acc, ent, config)
    b = update_baseline(b, r, config.bl_dec)
    return b, (arc, r, b, acc, ent)

  keys = jax.random.split(key, 2 * config.num_aggregate)
  keys = keys.reshape((config.num_aggregate, 2) + keys.shape[1:])
  baseline, (arcs, rs, bs, accs, ents) = jax.lax.scan(one, baseline, keys)

  def loss(p):
    per = jax.vmap(lambda a, r, b: reinforce_loss(p, a, r, b, config))(arcs, rs, bs)
    return jnp.mean(per)

  grads = jax.grad(loss)(params)
  updates, opt_state = controller_optimizer(config).update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  metrics = {"reward": jnp.mean(rs), "accuracy": jnp.mean(accs), "entropy": jnp.mean(ents),
             "baseline": baseline}
  return params, opt_state, baseline, metrics


def train_controller(params: Params, opt_state, baseline, key: jax.Array,
                     reward_fn: Callable[[Arc, jax.Array], jax.Array], config: ControllerConfig):
  """``train_steps`` ``controller_step``s (keys ``jax.random.split(key, train_steps)``).

  ``reward_fn(arc, key) -> accuracy`` must be pure (jnas passes the shared-weight accuracy on a
  validation batch). Returns (params, opt_state, baseline, metrics): metrics are the means of
  reward, accuracy and entropy over all samples and the final baseline. Jit with ``reward_fn``
  and ``config`` static (e.g. ``functools.partial``); vmap over seeds on the other arguments.
  """

  def step(carry, k):
    p, s, b = carry
    p, s, b, m = controller_step(p, s, b, k, reward_fn, config)
    return (p, s, b), m

  (params, opt_state, baseline), ms = jax.lax.scan(
    step, (params, opt_state, jnp.asarray(baseline, jnp.float32)),
    jax.random.split(key, config.train_steps))
  metrics = {"reward": jnp.mean(ms["reward"]), "accuracy": jnp.mean(ms["accuracy"]),
             "entropy": jnp.mean(ms["entropy"]), "baseline": baseline}
  return params, opt_state, baseline, metrics
