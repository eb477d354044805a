"""NAO's encoder-predictor-decoder (EPD) (Luo, Tian, Qin, Chen, Liu, "Neural Architecture
Optimization", NeurIPS 2018), as NAS-Benchmark ran it: the NAO-WS search in the 5-op space of a
mid-2019 snapshot of renqianluo/NAO_pytorch [NB:NAO/encoder.py, decoder.py, controller.py,
utils.py, train_search.py; spec ``methods/other_spaces.md`` §2.3, §2.5].

Sequence (branch length 2) of an arc ``{"inputs", "ops"}`` of shape (2, B, 2) (cell, node, branch):
per cell, per node j, the tokens [p1 + 1, op1 + B + 2, p2 + 1, op2 + B + 2]; normal cell then
reduce cell, 8B tokens (40 at B = 5). Index tokens are 1..B+1, op tokens B+2..B+1+num_ops
(7..11 at B = 5), 0 is SOS/EOS; vocabulary V = B + 2 + num_ops (12) [utils.py
``parse_arch_to_seq``, which hard-codes 7 = B + 2 for B = 5].

Encoder: token embedding E (48); consecutive token pairs concatenated, x_t = [emb(s_2t); emb(s_2t+1)]
(20 steps of 2E = 96); LSTM of hidden H = 2E (96), zero initial state; o_t = h_t / ||h_t||;
arch embedding e = m / ||m||, m = mean_t o_t.
Predictor: f(e) = sigmoid(w . MLP(e) + b), MLP = mlp_layers x [Linear 200, ReLU, Dropout 0.1].
Decoder: LSTM of hidden H, token embedding H, initial (h_0, c_0) = (e, e); at step t
    a_t = softmax_s((W_in h_t) . o_s),  mix_t = sum_s a_ts o_s,
    y_t = tanh(W_out [mix_t; h_t]),     log p(. | s_<t) = log_softmax(W y_t + b)
(W_in, W_out without bias; no residual connections in NB's snapshot), teacher forcing on the
input [SOS] + s[:-1]; the attention output does not feed back into the LSTM.
Loss: L = lambda * mean (f - y)^2 + (1 - lambda) * mean_t -log p(s_t | s_<t), with min-max
normalised accuracies y in [0, 1].
Optimiser: PyTorch Adam with coupled L2 (g <- clip_5(g) + wd * theta, then Adam(lr)); a fresh Adam
per search iteration (train_search.py builds it inside the loop), the EPD weights persist. Here its
state lives on the raveled parameter vector (``init_opt_state``): the same elementwise update, fused.
Init: U(-0.04, 0.04) for every >= 2-D parameter (embeddings included); biases keep PyTorch's
defaults, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Linear and U(-1/sqrt(H), 1/sqrt(H)) for both LSTM
biases.
Generation: o'_t = normalise(o_t + eta * df/do_t) (the gradient of f through e with respect to the
step outputs, not the mean), e' = normalise(mean_t o'_t); then greedy decoding from (e', o') with
the constraint: at even step s an index token in 1 .. floor((s/2 mod 2B)/2) + 2 (node indices
<= node + 1), at odd steps an op token [decoder.py ``decode``, which hard-codes 2B = 10 and 7].
The search (train_search.py) tries eta = 1, 2, 3, ... on the 100 best archs and keeps decoded
sequences not in the pool and not yet generated, until 300 are found or eta > 50 (the code tests
eta > 50 after generating, so an eta = 51 round still runs).

Data: the pool is shuffled and split 90/10; the training part is augmented 8x (``expand``: the
originals plus 7 copies, each with one random node per cell whose two (index, op) branches are
exchanged, which leaves the architecture unchanged). With ``--controller_expand`` set the training
set is not swapped again per epoch; NB's ``NAODataset`` swaps the validation and inference sets
(``swap=True`` default), so each generation round starts from freshly swapped seeds (``generate``'s
``key``).

Paper versus code: the paper (and Yang et al. App. A.1) give lambda = 0.9 and eta = 10; the code
NB ran uses lambda = 0.8 (``--controller_trade_off`` default) and eta = 1, 2, ..., so do the
defaults here. Encoder and decoder dropouts are 0 in NB and are left out; the decoder's (e, e)
initial state only fits a 1-layer decoder LSTM.

  cfg = EPDConfig()
  params = init_params(key, cfg)
  params, _, hist = fit(params, seqs, minmax_normalize(accs), key, config=cfg)
  new = generate(params, seqs[top100], seqs, 300, config=cfg, key=key)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jnas.compile_options import lean_jit, step_jit

__all__ = [
  "SOS", "EPDConfig", "vocab_size", "seq_length", "arc_to_seq", "seq_to_arc", "valid_seqs",
  "swap_branches", "swap_seqs", "expand", "train_valid_split", "minmax_normalize", "init_params",
  "encode", "predictor", "predict_from_outputs", "decode_teacher", "decode_greedy", "allowed_tokens",
  "loss_fn", "make_optimizer", "init_opt_state", "train_step", "fit", "predict", "move_embedding",
  "infer_details", "infer", "generate", "pairwise_accuracy", "evaluate",
]

SOS = 0  # also EOS; never produced by the constrained decoder


@dataclasses.dataclass(frozen=True)
class EPDConfig:
  """EPD sizes and training; defaults = NB's README / ``train_search.py`` (controller_*)."""

  B: int = 5                  # nodes per cell (``--child_nodes``)
  num_ops: int = 5            # the 5-op space
  encoder_layers: int = 1
  encoder_emb: int = 48
  encoder_hidden: int = 96    # = (source_length // encoder_length) * encoder_emb
  decoder_layers: int = 1
  decoder_hidden: int = 96    # = encoder_hidden: the decoder starts from (e, e)
  mlp_layers: int = 3
  mlp_hidden: int = 200
  mlp_dropout: float = 0.1
  init_range: float = 0.04
  lr: float = 1e-3
  weight_decay: float = 1e-4  # coupled L2, as torch.optim.Adam(weight_decay=...)
  batch_size: int = 100
  grad_clip: float = 5.0
  epochs: int = 1000
  trade_off: float = 0.8      # lambda; code default (the paper says 0.9)
  source_length: int = 40     # 8 B tokens
  encoder_length: int = 20    # token pairs concatenated
  decoder_length: int = 40
  expand: int = 8             # ``--controller_expand``: training set x8 by branch swaps

  def __post_init__(self):
    for name in ("B", "num_ops", "encoder_layers", "encoder_emb", "encoder_hidden", "decoder_layers",
                 "decoder_hidden", "mlp_hidden", "batch_size", "epochs", "source_length",
                 "encoder_length", "decoder_length", "expand"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"EPDConfig.{name} must be a positive int, got {v!r}")
    if not isinstance(self.mlp_layers, (int, np.integer)) or self.mlp_layers < 0:
      raise ValueError(f"EPDConfig.mlp_layers must be an int >= 0, got {self.mlp_layers!r}")
    if not 0.0 <= self.mlp_dropout < 1.0:
      raise ValueError(f"EPDConfig.mlp_dropout must be in [0, 1), got {self.mlp_dropout}")
    if not 0.0 <= self.trade_off <= 1.0:
      raise ValueError(f"EPDConfig.trade_off (lambda) must be in [0, 1], got {self.trade_off}")
    for name in ("init_range", "lr", "grad_clip"):
      if not getattr(self, name) > 0:
        raise ValueError(f"EPDConfig.{name} must be > 0, got {getattr(self, name)}")
    if self.weight_decay < 0:
      raise ValueError(f"EPDConfig.weight_decay must be >= 0, got {self.weight_decay}")
    if self.source_length != 8 * self.B:
      raise ValueError(f"source_length must be 8 * B = {8 * self.B} (2 cells x B nodes x 2 branches x "
                       f"(index, op)), got {self.source_length}")
    if self.source_length % self.encoder_length:
      raise ValueError(f"encoder_length {self.encoder_length} must divide source_length {self.source_length}")
    ratio = self.source_length // self.encoder_length
    if self.encoder_hidden != ratio * self.encoder_emb:
      raise ValueError(f"encoder_hidden must be (source_length // encoder_length) * encoder_emb = "
                       f"{ratio * self.encoder_emb} (the encoder LSTM's input size is its hidden size), "
                       f"got {self.encoder_hidden}")
    if self.decoder_length != self.source_length:
      raise ValueError(f"decoder_length must equal source_length {self.source_length}, got {self.decoder_length}")
    if self.decoder_hidden != self.encoder_hidden:
      raise ValueError(f"decoder_hidden must equal encoder_hidden {self.encoder_hidden} (initial state (e, e), "
                       f"attention over o), got {self.decoder_hidden}")
    if self.decoder_layers != 1:
      raise ValueError(f"decoder_layers must be 1 (the (e, e) initial state is one layer's), got {self.decoder_layers}")

  @property
  def vocab_size(self) -> int:
    return vocab_size(self.B, self.num_ops)

  @property
  def ratio(self) -> int:
    return self.source_length // self.encoder_length

  def replace(self, **changes) -> "EPDConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def for_space(cls, B: int, num_ops: int = 5, **changes) -> "EPDConfig":
    """Lengths derived from B (source/decoder 8B, encoder 4B: token pairs); other fields default or ``changes``."""
    return cls(**{"B": B, "num_ops": num_ops, "source_length": 8 * B, "encoder_length": 4 * B,
                  "decoder_length": 8 * B, **changes})


def vocab_size(B: int = 5, num_ops: int = 5) -> int:
  """V = B + 2 + num_ops: SOS/EOS, B + 1 index tokens, num_ops op tokens (12 at B = num_ops = 5)."""
  return B + 2 + num_ops


def seq_length(B: int = 5) -> int:
  """8 B tokens: 2 cells x B nodes x 2 branches x (index, op)."""
  return 8 * B


def _lazy_jit(make, **jit_kwargs):
  """``make(fn, **jit_kwargs)`` (``compile_options.step_jit``: LLVM level 1 on CPU, or ``lean_jit``
  for run-once programs), built on the first use so that importing this module starts no backend;
  ``.lower`` as on a jitted function. Called on tracers (inside the caller's own ``jit``, ``grad``,
  ``eval_shape``) it runs ``fn`` itself: XLA options are only allowed on a top-level jit."""

  def wrap(fn):
    cache = []

    def jitted():
      if not cache:
        cache.append(make(fn, **jit_kwargs))
      return cache[0]

    @functools.wraps(fn)
    def call(*args, **kwargs):
      if any(_is_tracer(x) for x in jax.tree.leaves((args, kwargs))):
        return fn(*args, **kwargs)
      return jitted()(*args, **kwargs)

    call.lower = lambda *args, **kwargs: jitted().lower(*args, **kwargs)
    return call

  return wrap


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


# ----------------------------------------------------------------------------- encoding


def valid_seqs(seqs, B: int = 5, num_ops: int = 5) -> jax.Array:
  """bool (...,): each sequence's tokens are in range, index tokens 1..j+2 at node j, op tokens at op slots."""
  seqs = jnp.asarray(seqs)
  if seqs.shape[-1:] != (8 * B,):
    raise ValueError(f"sequences must have last axis 8 * B = {8 * B}, got shape {seqs.shape}")
  lead = seqs.shape[:-1]
  x = seqs.reshape(lead + (2, B, 2, 2))
  idx, op = x[..., 0], x[..., 1]
  hi = (jnp.arange(B) + 2).reshape((1,) * len(lead) + (1, B, 1))
  ok = (idx >= 1) & (idx <= hi) & (op >= B + 2) & (op < B + 2 + num_ops)
  return ok.all(axis=(-3, -2, -1))


def arc_to_seq(arc: Mapping, num_ops: int | None = None) -> jax.Array:
  """int32 (..., 8B): per node [p1 + 1, op1 + B + 2, p2 + 1, op2 + B + 2], normal then reduce cell.

  NAO's ``parse_arch_to_seq`` (branch length 2). Leading batch axes are kept; checks ranges when
  the arc is concrete (``num_ops`` bounds the op ids if given)."""
  inputs, ops = jnp.asarray(arc["inputs"]), jnp.asarray(arc["ops"])
  if inputs.shape != ops.shape or inputs.shape[-3:-2] != (2,) or inputs.shape[-1:] != (2,) or inputs.ndim < 3:
    raise ValueError(f"arc inputs/ops must have shape (..., 2, B, 2), got {inputs.shape} and {ops.shape}")
  B = inputs.shape[-2]
  if not (_is_tracer(inputs) or _is_tracer(ops)):
    i, o = np.asarray(inputs), np.asarray(ops)
    hi = (np.arange(B) + 1).reshape((1,) * (i.ndim - 2) + (B, 1))
    if (i < 0).any() or (i > hi).any():
      raise ValueError("arc inputs[..., c, j, k] must lie in 0..j+1")
    if (o < 0).any() or (num_ops is not None and (o >= num_ops).any()):
      raise ValueError(f"arc ops must lie in 0..{'num_ops-1' if num_ops is None else num_ops - 1}")
  seq = jnp.stack([inputs + 1, ops + (B + 2)], axis=-1)  # (..., 2, B, 2, 2)
  return seq.reshape(inputs.shape[:-3] + (8 * B,)).astype(jnp.int32)


def seq_to_arc(seq, B: int = 5, num_ops: int = 5) -> dict:
  """Inverse of ``arc_to_seq``: {"inputs", "ops"} int32 (..., 2, B, 2); raises ValueError on a malformed sequence."""
  seq = jnp.asarray(seq)
  if seq.shape[-1:] != (8 * B,):
    raise ValueError(f"a sequence must have 8 * B = {8 * B} tokens on its last axis, got shape {seq.shape}")
  if not _is_tracer(seq):
    ok = np.asarray(valid_seqs(seq, B, num_ops))
    if not ok.all():
      bad = np.argwhere(~ok.reshape(-1))[:, 0].tolist()
      raise ValueError(f"malformed sequence(s) at flat index {bad[:10]}: index tokens at even positions must be "
                       f"1..node+2, op tokens at odd positions {B + 2}..{B + 1 + num_ops}")
  x = seq.reshape(seq.shape[:-1] + (2, B, 2, 2)).astype(jnp.int32)
  return {"inputs": x[..., 0] - 1, "ops": x[..., 1] - (B + 2)}


def _node_hits(key, lead: tuple, B: int) -> jax.Array:
  node = jax.random.randint(key, lead + (2,), 0, B)
  return jax.nn.one_hot(node, B) > 0  # (..., 2, B)


def swap_branches(key, arc: Mapping) -> dict:
  """For one uniform node per cell exchange its two (input, op) branches; (..., 2, B, 2) arcs.

  The architecture is unchanged (a node is x + y); its sequence changes unless the two branches are equal."""
  inputs, ops = jnp.asarray(arc["inputs"]), jnp.asarray(arc["ops"])
  hit = _node_hits(key, inputs.shape[:-3], inputs.shape[-2])[..., None]
  return {"inputs": jnp.where(hit, inputs[..., ::-1], inputs), "ops": jnp.where(hit, ops[..., ::-1], ops)}


def swap_seqs(key, seqs, B: int = 5) -> jax.Array:
  """``swap_branches`` on token sequences (..., 8B): seq(swap(arc, key)) == swap_seqs(key, seq(arc))."""
  seqs = jnp.asarray(seqs)
  lead = seqs.shape[:-1]
  x = seqs.reshape(lead + (2, B, 2, 2))
  hit = _node_hits(key, lead, B)[..., None, None]
  return jnp.where(hit, x[..., ::-1, :], x).reshape(seqs.shape)


def expand(key, seqs, targets, factor: int = 8, B: int = 5):
  """NB's ``--controller_expand``: the originals then factor - 1 swapped copies of each (factor x N rows)."""
  seqs, targets = jnp.asarray(seqs, jnp.int32), jnp.asarray(targets, jnp.float32)
  if factor < 1:
    raise ValueError(f"expand factor must be >= 1, got {factor}")
  copies = [seqs] + [swap_seqs(k, seqs, B) for k in jax.random.split(key, factor - 1)]
  return jnp.concatenate(copies, 0), jnp.tile(targets, factor)


def train_valid_split(key, seqs, targets, ratio: float = 0.9):
  """Shuffle and split ``int(n * ratio)`` / rest, as train_search.py before expanding."""
  seqs, targets = np.asarray(seqs), np.asarray(targets)
  perm = np.asarray(jax.random.permutation(key, len(seqs)))
  n = int(len(seqs) * ratio)
  return (seqs[perm[:n]], targets[perm[:n]]), (seqs[perm[n:]], targets[perm[n:]])


def minmax_normalize(values) -> np.ndarray:
  """y = (a - min a) / (max a - min a) in [0, 1] (train_search.py); zeros if all a are equal (the code divides by 0)."""
  a = np.asarray(values, np.float64)
  lo, hi = a.min(), a.max()
  if hi == lo:
    return np.zeros_like(a, np.float32)
  return ((a - lo) / (hi - lo)).astype(np.float32)


# ----------------------------------------------------------------------------- parameters


def _uniform(key, shape, r):
  return jax.random.uniform(key, shape, jnp.float32, -r, r)


def _linear(key, n_in, n_out, r, bias=True):
  kw, kb = jax.random.split(key)
  p = {"w": _uniform(kw, (n_in, n_out), r)}
  if bias:
    p["b"] = _uniform(kb, (n_out,), 1.0 / math.sqrt(n_in))
  return p


def _lstm(key, n_in, H, r):
  k = jax.random.split(key, 4)
  s = 1.0 / math.sqrt(H)
  return {"w_i": _uniform(k[0], (n_in, 4 * H), r), "w_h": _uniform(k[1], (H, 4 * H), r),
          "b_i": _uniform(k[2], (4 * H,), s), "b_h": _uniform(k[3], (4 * H,), s)}


@_lazy_jit(lean_jit, static_argnames=("config",))
def init_params(key, config: EPDConfig = EPDConfig()) -> dict:
  """EPD parameters: U(-init_range, init_range) for >= 2-D tensors, PyTorch default biases."""
  c, r, V, H = config, config.init_range, config.vocab_size, config.encoder_hidden
  keys = iter(jax.random.split(key, 8 + c.encoder_layers + c.mlp_layers))
  enc = {"emb": _uniform(next(keys), (V, c.encoder_emb), r),
         "lstm": [_lstm(next(keys), H, H, r) for _ in range(c.encoder_layers)]}
  mlp = [_linear(next(keys), H if i == 0 else c.mlp_hidden, c.mlp_hidden, r) for i in range(c.mlp_layers)]
  reg = _linear(next(keys), c.mlp_hidden if c.mlp_layers else H, 1, r)
  dec = {"emb": _uniform(next(keys), (V, H), r), "lstm": _lstm(next(keys), H, H, r),
         "attn_in": _uniform(next(keys), (H, H), r), "attn_out": _uniform(next(keys), (2 * H, H), r),
         "out": _linear(next(keys), H, V, r)}
  return {"encoder": enc, "mlp": mlp, "regressor": reg, "decoder": dec}


# ----------------------------------------------------------------------------- model


def _dense(p, x):
  y = x @ p["w"]
  if "b" in p:
    y = y + p["b"].reshape((1,) * (y.ndim - 1) + (-1,))
  return y


def _normalize(x, axis=-1):
  """F.normalize: x / max(||x||_2, 1e-12)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _lstm_cell(p, carry, x):
  """PyTorch LSTM cell, gates (i, f, g, o): c' = f c + i g, h' = o tanh(c')."""
  return _lstm_gates(p, carry, x @ p["w_i"] + (p["b_i"] + p["b_h"])[None, :])


def _lstm_gates(p, carry, xw):
  h, c = carry
  i, f, g, o = jnp.split(xw + h @ p["w_h"], 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (h, c), h


def _lstm_seq(p, x, carry):
  """Run the LSTM over time-major x (T, N, D) from ``carry``; the input projection is one matmul."""
  xw = x @ p["w_i"] + (p["b_i"] + p["b_h"])[None, None, :]
  _, hs = jax.lax.scan(lambda hc, xw_t: _lstm_gates(p, hc, xw_t), carry, xw)
  return hs


def encode(params, seqs, config: EPDConfig = EPDConfig()):
  """(o (N, T, H) unit step outputs, e (N, H) = normalise(mean_t o_t)) for int sequences (N, 8B)."""
  seqs = jnp.asarray(seqs, jnp.int32)
  N = seqs.shape[0]
  x = params["encoder"]["emb"][seqs].reshape(N, config.encoder_length, -1)  # pairs concatenated
  x = jnp.swapaxes(x, 0, 1)  # time-major
  for p in params["encoder"]["lstm"]:
    zeros = jnp.zeros((N, p["w_h"].shape[0]), x.dtype)
    x = _lstm_seq(p, x, (zeros, zeros))
  o = _normalize(jnp.swapaxes(x, 0, 1))
  return o, _normalize(o.mean(axis=1))


def predictor(params, e, config: EPDConfig = EPDConfig(), key=None, train: bool = False) -> jax.Array:
  """f = sigmoid(Linear(MLP(e))), (N,); dropout only when ``train`` (needs ``key``)."""
  h = e
  keys = jax.random.split(key, max(config.mlp_layers, 1)) if (train and config.mlp_dropout > 0) else None
  for i, p in enumerate(params["mlp"]):
    h = jax.nn.relu(_dense(p, h))
    if keys is not None:
      keep = 1.0 - config.mlp_dropout
      h = jnp.where(jax.random.bernoulli(keys[i], keep, h.shape), h / keep, 0.0)
  return jax.nn.sigmoid(_dense(params["regressor"], h))[:, 0]


def predict_from_outputs(params, o, config: EPDConfig = EPDConfig()) -> jax.Array:
  """f(normalise(mean_t o_t)) in eval mode, (N,)."""
  return predictor(params, _normalize(o.mean(axis=1)), config)


def _attend_out(p, h, o):
  """log_softmax(W tanh(W_out [sum_s softmax_s((W_in h) . o_s) o_s; h]) + b) for h (N, ..., H), o (N, S, H)."""
  score = jnp.einsum("n...h,nsh->n...s", h @ p["attn_in"], o)
  mix = jnp.einsum("n...s,nsh->n...h", jax.nn.softmax(score, axis=-1), o)
  y = jnp.tanh(jnp.concatenate([mix, h], axis=-1) @ p["attn_out"])
  return jax.nn.log_softmax(_dense(p["out"], y), axis=-1)


def decode_teacher(params, dec_inputs, e, o, config: EPDConfig = EPDConfig()) -> jax.Array:
  """Teacher-forced log-probabilities (N, L, V) for decoder inputs (N, L) ([SOS] + target[:-1]).

  The attention output does not feed the LSTM, so the LSTM runs first and attention once over all steps."""
  p = params["decoder"]
  x = p["emb"][jnp.swapaxes(jnp.asarray(dec_inputs, jnp.int32), 0, 1)]  # (L, N, H)
  h = jnp.swapaxes(_lstm_seq(p["lstm"], x, (e, e)), 0, 1)
  return _attend_out(p, h, o)


def allowed_tokens(B: int = 5, num_ops: int = 5) -> np.ndarray:
  """bool (8B, V): step s even -> index tokens 1..floor((s/2 mod 2B)/2) + 2; s odd -> op tokens B+2..V-1."""
  L, V = 8 * B, vocab_size(B, num_ops)
  s = np.arange(L)[:, None]
  tok = np.arange(V)[None, :]
  node = (s // 2 % (2 * B)) // 2
  return np.where(s % 2 == 0, (tok >= 1) & (tok <= node + 2), tok >= B + 2)


def decode_greedy(params, e, o, config: EPDConfig = EPDConfig()) -> jax.Array:
  """Constrained greedy decoding from (h_0, c_0) = (e, e) with attention on o: int32 (N, 8B)."""
  p = params["decoder"]
  mask = jnp.asarray(allowed_tokens(config.B, config.num_ops))
  N = e.shape[0]

  def step(carry, m):
    hc, tok = carry
    hc, h = _lstm_cell(p["lstm"], hc, p["emb"][tok])
    logp = _attend_out(p, h, o)
    tok = jnp.argmax(jnp.where(m[None, :], logp, -jnp.inf), axis=-1).astype(jnp.int32)
    return (hc, tok), tok

  _, toks = jax.lax.scan(step, ((e, e), jnp.full((N,), SOS, jnp.int32)), mask)
  return jnp.swapaxes(toks, 0, 1)


# ----------------------------------------------------------------------------- training


def loss_fn(params, batch, key, config: EPDConfig = EPDConfig(), train: bool = True):
  """lambda * MSE(f, y) + (1 - lambda) * NLL; ``batch`` = {"seqs" (N, L), "targets" (N,), optional "weights" (N,)}.

  Weights (0/1) mask padding rows: MSE is the mean over rows, NLL over the rows' tokens."""
  seqs = jnp.asarray(batch["seqs"], jnp.int32)
  y = jnp.asarray(batch["targets"], jnp.float32)
  w = batch.get("weights")
  w = jnp.ones(y.shape, jnp.float32) if w is None else jnp.asarray(w, jnp.float32)
  o, e = encode(params, seqs, config)
  f = predictor(params, e, config, key, train)
  dec_in = jnp.concatenate([jnp.full((seqs.shape[0], 1), SOS, jnp.int32), seqs[:, :-1]], axis=1)
  logp = decode_teacher(params, dec_in, e, o, config)
  nll_tok = -jnp.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0]
  n = jnp.maximum(w.sum(), 1.0)
  mse = jnp.sum(w * (f - y) ** 2) / n
  nll = jnp.sum(w[:, None] * nll_tok) / (n * seqs.shape[1])
  loss = config.trade_off * mse + (1.0 - config.trade_off) * nll
  return loss, {"loss": loss, "mse": mse, "nll": nll}


def make_optimizer(config: EPDConfig = EPDConfig()) -> optax.GradientTransformation:
  """clip_by_global_norm(5) -> + wd * theta (PyTorch Adam's coupled L2) -> Adam(lr, 0.9, 0.999, 1e-8)."""
  return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.add_decayed_weights(config.weight_decay),
                     optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.scale(-config.lr))


def init_opt_state(params, config: EPDConfig = EPDConfig()):
  """Fresh optimiser state; it lives on the raveled parameter vector (one fused update, not one per tensor)."""
  return make_optimizer(config).init(ravel_pytree(params)[0])


def _train_step(params, opt_state, batch, key, config: EPDConfig = EPDConfig()):
  grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch, key, config, True)
  flat, unravel = ravel_pytree(params)
  updates, opt_state = make_optimizer(config).update(ravel_pytree(grads)[0], opt_state, flat)
  return unravel(flat + updates), opt_state, metrics


train_step = _lazy_jit(step_jit, static_argnames=("config",))(_train_step)
train_step.__doc__ = """One EPD step on ``batch`` (see ``loss_fn``): (params, opt_state, metrics).

``opt_state`` from ``init_opt_state``; ``config`` is static; ``key`` drives the MLP dropout."""


@_lazy_jit(step_jit, static_argnames=("config", "swap"))
def _epoch(params, opt_state, seqs, targets, key, config: EPDConfig, swap: bool):
  n = seqs.shape[0]
  bs = config.batch_size
  nb = -(-n // bs)
  k_perm, k_swap, k_drop = jax.random.split(key, 3)
  if swap:  # NAODataset(swap=True): a fresh random swap of every row each epoch
    seqs = swap_seqs(k_swap, seqs, config.B)
  perm = jax.random.permutation(k_perm, n)
  pad = nb * bs - n
  idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(nb, bs)
  wts = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))]).reshape(nb, bs)

  def body(carry, xs):
    p, s = carry
    i, w, k = xs
    p, s, m = _train_step(p, s, {"seqs": seqs[i], "targets": targets[i], "weights": w}, k, config)
    return (p, s), (m, w.sum())

  (params, opt_state), (m, cnt) = jax.lax.scan(body, (params, opt_state), (idx, wts, jax.random.split(k_drop, nb)))
  mean = {k: jnp.sum(v * cnt) / n for k, v in m.items()}  # AvgrageMeter, weighted by batch size
  return params, opt_state, mean


def fit(params, seqs, targets, key, epochs: int | None = None, *, config: EPDConfig = EPDConfig(),
        opt_state=None, swap: bool = False):
  """Train the EPD for ``epochs`` (default ``config.epochs``) shuffled epochs of ``batch_size`` rows
  (last batch partial, as a DataLoader without drop_last). ``opt_state`` None starts a fresh Adam
  (NB builds one per search iteration). ``swap`` re-swaps every row each epoch (NB does so only
  without ``expand``). Returns (params, opt_state, history {"loss", "mse", "nll"} per epoch)."""
  seqs = jnp.asarray(seqs, jnp.int32)
  targets = jnp.asarray(targets, jnp.float32)
  if seqs.ndim != 2 or seqs.shape[1] != config.source_length or targets.shape != seqs.shape[:1]:
    raise ValueError(f"fit needs seqs (N, {config.source_length}) and targets (N,), got {seqs.shape}, {targets.shape}")
  epochs = config.epochs if epochs is None else epochs
  if opt_state is None:
    opt_state = init_opt_state(params, config)
  hist = {"loss": [], "mse": [], "nll": []}
  for k in jax.random.split(key, epochs) if epochs else []:
    params, opt_state, m = _epoch(params, opt_state, seqs, targets, k, config, swap)
    for name in hist:
      hist[name].append(m[name])
  return params, opt_state, {k: np.asarray(jnp.stack(v)) if v else np.zeros((0,)) for k, v in hist.items()}


# ----------------------------------------------------------------------------- inference


@_lazy_jit(step_jit, static_argnames=("config",))
def predict(params, seqs, config: EPDConfig = EPDConfig()) -> jax.Array:
  """Predicted score f (N,) in eval mode (no dropout)."""
  _, e = encode(params, seqs, config)
  return predictor(params, e, config)


def move_embedding(params, seqs, step_size, config: EPDConfig = EPDConfig()) -> dict:
  """o' = normalise(o + eta df/do), e' = normalise(mean_t o'_t) (traceable; ``infer_details`` jits it).

  Returns o, e, o_new, e_new and the eval-mode predictions f = f(e), f_new = f(e')."""
  o, e = encode(params, seqs, config)
  g = jax.grad(lambda o_: predict_from_outputs(params, o_, config).sum())(o)
  o_new = _normalize(o + step_size * g)
  e_new = _normalize(o_new.mean(axis=1))
  return {"o": o, "e": e, "o_new": o_new, "e_new": e_new, "f": predictor(params, e, config),
          "f_new": predictor(params, e_new, config)}


@_lazy_jit(step_jit, static_argnames=("config",))
def infer_details(params, seqs, step_size, config: EPDConfig = EPDConfig()) -> dict:
  """``move_embedding`` then ``decode_greedy`` from (e', o'): {"seqs" (N, 8B), "e", "e_new", "f", "f_new"}."""
  m = move_embedding(params, seqs, step_size, config)
  out = {k: m[k] for k in ("e", "e_new", "f", "f_new")}
  out["seqs"] = decode_greedy(params, m["e_new"], m["o_new"], config)
  return out


def infer(params, seqs, step_size, config: EPDConfig = EPDConfig()) -> jax.Array:
  """New sequences (N, 8B): decode greedily from the embedding moved by ``step_size`` (eta; 0 reconstructs)."""
  return infer_details(params, seqs, jnp.float32(step_size), config)["seqs"]


def generate(params, seqs_top, existing, n_new: int, max_step: int = 50, *, config: EPDConfig = EPDConfig(),
             key=None) -> np.ndarray:
  """NAO loop step 5: eta = 1, 2, ...; keep decoded sequences not in ``existing`` nor already kept, until
  ``n_new`` or a round with eta > max_step has run (train_search.py tests after generating, so eta
  reaches max_step + 1). ``key`` re-swaps the seeds each round (NB's inference NAODataset); None
  keeps them as given. Returns int32 (n, 8B), n <= n_new, in order of discovery."""
  seqs_top = jnp.asarray(seqs_top, jnp.int32)
  seen = {tuple(s) for s in np.asarray(existing, np.int64).reshape(-1, config.source_length).tolist()}
  new: list[tuple] = []
  eta = 0
  while len(new) < n_new:
    eta += 1
    seeds = seqs_top if key is None else swap_seqs(jax.random.fold_in(key, eta), seqs_top, config.B)
    for s in np.asarray(infer(params, seeds, eta, config)).tolist():
      t = tuple(s)
      if t not in seen:
        seen.add(t)
        new.append(t)
      if len(new) >= n_new:
        break
    if eta > max_step:
      break
  return np.asarray(new, np.int32).reshape(-1, config.source_length)


def pairwise_accuracy(a, b) -> float:
  """NAO's ``pairwise_accuracy``: fraction of pairs i < j ordered alike (a_i >= a_j and b_i >= b_j, or both <)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  i, j = np.triu_indices(len(a), 1)
  agree = ((a[i] >= a[j]) & (b[i] >= b[j])) | ((a[i] < a[j]) & (b[i] < b[j]))
  return float(agree.mean()) if len(i) else 1.0


def evaluate(params, seqs, targets, config: EPDConfig = EPDConfig()) -> dict:
  """``nao_valid``: pairwise accuracy of f against targets, mean Hamming distance of the eta = 0 decoding."""
  seqs = jnp.asarray(seqs, jnp.int32)
  f = np.asarray(predict(params, seqs, config))
  rec = np.asarray(infer(params, seqs, 0.0, config))
  return {"pairwise_accuracy": pairwise_accuracy(targets, f),
          "hamming": float((rec != np.asarray(seqs)).sum(axis=1).mean())}
