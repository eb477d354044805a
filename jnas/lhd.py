"""The LHD cell space's genotypes and discretisation policies (Zhang and Ding, ICML 2023: "Rethink
DARTS Search Space and Renovate a New Benchmark"; code chaoji90/LHD).

An LHD cell has 5 intermediate nodes; node i reads states 0 .. i + 1 (the previous cell's sum
output and concat output, then the earlier nodes), and its mixing weights are *one* softmax over
all its (input, op) pairs, so a discrete node keeps the strongest pairs, possibly two ops from one
input. The cell has two outputs: a sum path (a softmax over the 5 nodes) and a gated concat path
(a sigmoid per node); a discrete cell keeps a subset of nodes for each. The full paper text was
not available; everything here follows the code [LHD ``eval/gen_trans.py``, ``search/genotypes.py``,
``search/concate_sum_five_sig.py``].

``LHDGenotype``: per cell type a tuple of (op, input state, node) triples and the ``sum`` and
``concat`` node lists (node indices 0..4, state = node + 2); text ``str`` / ``parse`` and JSON.
``discretize(weights, policy)`` turns the searched weights (per cell type the (20, 7) joint-softmax
probabilities and the (2, 5) output rows, softmax and sigmoid, as LHD pickles them) into a
genotype by one of the benchmark's policies [LHD ``eval/<dataset>/train_*.sh``]:

* ``base``: per node the top-2 pairs; sum path: nodes with weight > 0.2; concat path: nodes with
  gate > the mean gate;
* ``3ops``: the top-3 pairs per node, outputs as ``base``;
* ``4out``: pairs as ``base``; the top-4 nodes feed both outputs;
* ``1m``: ``base``'s cells (the policy is a capacity condition of the retraining: channels grown
  until 1.5 M parameters, 25 cells).

A threshold t of the code's ``_distribution_quantile_index`` means: an element-wise threshold
(count the values above it) when given, else the top ceil(t) for t > 1, else the smallest prefix
of the sorted values whose sum exceeds t. After the outputs are chosen a pair is kept if its node
is an output or, scanning the later pairs as the code does, a node fed (through a chain) by it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["PRIMITIVES", "STEPS", "POLICIES", "LHDGenotype", "discretize", "node_rows", "node_view", "from_node_view",
           "joint_softmax", "output_weights", "init_arch", "search_weights", "genotype_from_text", "genotype_from_dict", "eval_settings", "random_arch"]

PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
              "dil_conv_5x5")
STEPS = 5
CELL_TYPES = ("normal", "reduce")

# policy -> (pairs per node, sum path (element-wise, cumulative), concat path (element-wise | 'mean', cumulative))
POLICIES = {
    "base": dict(pairs=2, sum_elementwise=0.2, sum_cumulative=0.9, concat=0.0),
    "1m": dict(pairs=2, sum_elementwise=0.2, sum_cumulative=0.9, concat=0.0),
    "3ops": dict(pairs=3, sum_elementwise=0.2, sum_cumulative=0.9, concat=0.0),
    "4out": dict(pairs=2, sum_elementwise=0.0, sum_cumulative=4, concat=4),
}


def node_rows(steps: int = STEPS) -> list[tuple[int, int]]:
  """(lo, hi) edge rows of each node (node i has i + 2 inputs): 0-2, 2-5, 5-9, 9-14, 14-20."""
  out, lo = [], 0
  for i in range(steps):
    out.append((lo, lo + i + 2))
    lo += i + 2
  return out


def preprocess(spec, affine: bool):
  """LHD's (preprocess0, preprocess1) of a cell (``jnas.macro.CellSpec``): identity (a 1x1
  ReLU-conv-BN to C in a reduction cell, whose sum input has C/2 channels) and a 1x1 ReLU-conv-BN
  to C [LHD ``Cell.__init__``, whose ``reduction_prev`` equals ``reduction``]."""
  from jnas import ops
  if spec.reduction or spec.C_pp != spec.C:
    pre0 = ops.relu_conv_bn(spec.C_pp, spec.C, affine)
  else:
    pre0 = ops.identity()
  return pre0, ops.relu_conv_bn(spec.C_p, spec.C, affine)


def node_view(a, steps: int = STEPS, fill: float = -1e9):
  """(E, n_ops) edge rows -> (steps, (steps + 1) * n_ops): row i holds node i's (input, op) pairs
  flattened input-major (LHD's ``alphas[start:end].view(-1)``), padded with ``fill`` (a large
  negative logit: exactly 0 after a softmax or a Gumbel softmax)."""
  import jax.numpy as jnp
  n_ops, width = a.shape[-1], (steps + 1) * a.shape[-1]
  rows = [jnp.pad(a[lo:hi].reshape(-1), (0, width - (hi - lo) * n_ops), constant_values=fill)
          for lo, hi in node_rows(steps)]
  return jnp.stack(rows)


def from_node_view(v, steps: int = STEPS, n_ops: int = len(PRIMITIVES)):
  """The inverse of ``node_view``: (steps, (steps + 1) * n_ops) -> (E, n_ops)."""
  import jax.numpy as jnp
  return jnp.concatenate([v[i, :(hi - lo) * n_ops].reshape(hi - lo, n_ops) for i, (lo, hi) in enumerate(node_rows(steps))])


def joint_softmax(alpha, steps: int = STEPS, T=1.0):
  """LHD's ``inputSoftmax``: per node one softmax(alpha / T) over all its (input, op) pairs; (E, n_ops)."""
  import jax
  return from_node_view(jax.nn.softmax(node_view(alpha / T, steps), axis=-1), steps, alpha.shape[-1])


def output_weights(beta, T=1.0):
  """The (2, steps) output rows [softmax(beta_0 / T); sigmoid(beta_1)]: sum-path weights, concat gates."""
  import jax
  import jax.numpy as jnp
  return jnp.stack([jax.nn.softmax(beta[0] / T), jax.nn.sigmoid(beta[1])])


def init_arch(key, steps: int = STEPS, num_ops: int = len(PRIMITIVES), scale: float = 1e-3) -> dict:
  """LHD's ``_initialize_alphas``: alphas (E, n_ops) and output betas (2, steps) per cell type, all
  ``scale`` * N(0, 1)."""
  import jax
  E = node_rows(steps)[-1][1]
  keys = jax.random.split(key, 4)
  return {"normal": scale * jax.random.normal(keys[0], (E, num_ops)),
          "reduce": scale * jax.random.normal(keys[1], (E, num_ops)),
          "normal_output": scale * jax.random.normal(keys[2], (2, steps)),
          "reduce_output": scale * jax.random.normal(keys[3], (2, steps))}


def search_weights(arch: Mapping, steps: int = STEPS, T=1.0) -> dict:
  """The deterministic LHD weights of a searched arch: joint softmaxes and output rows (what LHD
  pickles and ``discretize`` reads)."""
  out = {}
  for t in CELL_TYPES:
    out[t] = joint_softmax(arch[t], steps, T)
    out[f"{t}_output"] = output_weights(arch[f"{t}_output"], T)
  return out


def _quantile(values, threshold: float, elementwise: float = 0.0):
  """(indices sorted by decreasing value, how many to keep) [LHD ``_distribution_quantile_index``]."""
  v = np.asarray(values, np.float64).ravel()
  order = np.argsort(-v, kind="stable")
  ranked = v[order]
  if elementwise > 0:
    return order, int((ranked > elementwise).sum())
  if threshold > 1:
    return order, int(math.ceil(threshold))
  return order, int(np.argmax(np.cumsum(ranked) > threshold) + 1)


@dataclasses.dataclass(frozen=True)
class LHDGenotype:
  """A discrete LHD cell pair. ``normal`` / ``reduce``: (op, input state, node) triples;
  ``normal_output`` / ``reduce_output``: {'sum': nodes, 'concat': nodes} (node indices 0..4)."""

  normal: tuple
  normal_output: Mapping
  reduce: tuple
  reduce_output: Mapping

  def __post_init__(self):
    for t in CELL_TYPES:
      pairs = tuple((str(op), int(i), int(n)) for op, i, n in getattr(self, t))
      out = getattr(self, f"{t}_output")
      out = {"sum": tuple(int(n) for n in out.get("sum", ())), "concat": tuple(int(n) for n in out.get("concat", ()))}
      object.__setattr__(self, t, pairs)
      object.__setattr__(self, f"{t}_output", out)
    self.validate()

  def validate(self) -> "LHDGenotype":
    for t in CELL_TYPES:
      for op, i, n in getattr(self, t):
        if op not in PRIMITIVES:
          raise ValueError(f"LHD genotype {t!r}: unknown op {op!r} (known: {', '.join(PRIMITIVES)})")
        if not 0 <= n < STEPS or not 0 <= i < n + 2:
          raise ValueError(f"LHD genotype {t!r}: ({op!r}, {i}, {n}): node {n} reads states 0..{n + 1} (nodes 0..4)")
      out = getattr(self, f"{t}_output")
      for path in ("sum", "concat"):
        bad = [n for n in out[path] if not 0 <= n < STEPS]
        if bad:
          raise ValueError(f"LHD genotype {t!r}: {path} path names nodes {bad} outside 0..{STEPS - 1}")
      if not out["sum"] and not out["concat"]:
        raise ValueError(f"LHD genotype {t!r}: no node feeds an output")
    return self

  def __hash__(self):  # (the output dicts are not hashable; programs are cached per genotype)
    return hash(self.to_json())

  def ops(self) -> set:
    return {op for t in CELL_TYPES for op, _, _ in getattr(self, t)}

  def cell(self, reduction: bool):
    """(pairs, {'sum': nodes, 'concat': nodes}) of the reduction or the normal cell."""
    t = "reduce" if reduction else "normal"
    return getattr(self, t), getattr(self, f"{t}_output")

  def nodes(self, reduction: bool) -> list[list[int]]:
    """Per node, the positions in the cell's pair list of the pairs that feed it."""
    pairs, _ = self.cell(reduction)
    return [[k for k, (_, _, n) in enumerate(pairs) if n == j] for j in range(STEPS)]

  def hash(self) -> str:
    import hashlib
    return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

  def to_dict(self) -> dict:
    return {"space": "lhd", **{t: [list(p) for p in getattr(self, t)] for t in CELL_TYPES},
            **{f"{t}_output": {k: list(v) for k, v in getattr(self, f"{t}_output").items()} for t in CELL_TYPES}}

  @classmethod
  def from_dict(cls, d: Mapping) -> "LHDGenotype":
    if d.get("space", "lhd") != "lhd":
      raise ValueError(f"not an LHD genotype (space {d.get('space')!r})")
    try:
      return cls(**{k: d[k] for k in ("normal", "normal_output", "reduce", "reduce_output")})
    except KeyError as e:
      raise ValueError(f"LHD genotype JSON lacks {e.args[0]!r}") from None

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, text: str) -> "LHDGenotype":
    return cls.from_dict(json.loads(text))

  def __str__(self) -> str:  # the code's Genotype_op repr
    cell = lambda t: "[" + ", ".join(f"({op!r}, {i}, {n})" for op, i, n in getattr(self, t)) + "]"
    out = lambda t: "{" + ", ".join(f"'{k}': {list(v)}" for k, v in getattr(self, f"{t}_output").items()) + "}"
    return (f"Genotype(normal={cell('normal')}, normal_output={out('normal')}, reduce={cell('reduce')}, "
            f"reduce_output={out('reduce')})")

  @classmethod
  def parse(cls, text: str) -> "LHDGenotype":
    """The inverse of ``str`` (the code's ``Genotype_op(...)`` text)."""
    import ast
    try:
      call = ast.parse(text.strip(), mode="eval").body
      if not isinstance(call, ast.Call):
        raise ValueError("not a Genotype(...) call")
      kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
      raise ValueError(f"cannot parse an LHD genotype from {text[:80]!r}: {e}") from None
    return cls.from_dict(kw)


# LHD's evaluation per policy [LHD ``eval/<dataset>/train_*.sh``]: (layers or None, drop-path base per
# dataset); '1m' also grows the channels (``eval_settings``)
_DROP_PATH = {"base": {"cifar10": 0.01, "cifar100": 0.02, "svhn": 0.02},
              "1m": {"cifar10": 0.015, "cifar100": 0.03, "svhn": 0.03},
              "3ops": {"cifar10": 0.01, "cifar100": 0.02, "svhn": 0.02},
              "4out": {"cifar10": 0.01, "cifar100": 0.02, "svhn": 0.02}}
CAPACITY = 1.5e6  # the '1m' policy's --model_capacity (in parameters; named 1M, the flag is 1.5)
CAPACITY_LAYERS = 25


def eval_settings(genotype: "LHDGenotype", policy: str, dataset: str, *, C: int = 36, layers: int = 20,
                  num_classes: int = 10, capacity: float = CAPACITY, capacity_layers: int = CAPACITY_LAYERS) -> dict:
  """``{'C', 'layers', 'drop_path_prob'}`` of the retraining of ``genotype`` under ``policy`` on
  ``dataset`` [LHD ``eval/cifar10/train.py``]: drop path = the policy's base rate times the normal
  cell's number of concat outputs; '1m': ``capacity_layers`` cells and C grown from ``C`` in
  steps of 2 until the network (auxiliary head excluded) has at least ``capacity`` parameters.
  Datasets other than LHD's three take CIFAR-10's rates."""
  if policy not in POLICIES:
    raise ValueError(f"unknown LHD policy {policy!r}; use one of {', '.join(POLICIES)}")
  rate = _DROP_PATH[policy].get(dataset, _DROP_PATH[policy]["cifar10"])
  out = {"C": int(C), "layers": int(layers), "drop_path_prob": rate * len(genotype.normal_output["concat"])}
  if policy == "1m":
    import jax
    from jnas.network import Network, count_params
    c = int(C)
    while True:
      net = Network(genotype, C=c, layers=capacity_layers, num_classes=num_classes, auxiliary=False)
      n = count_params(jax.eval_shape(net.init_variables, jax.random.key(0))["params"])
      if n >= capacity:
        break
      c += 2
    out.update(C=c, layers=int(capacity_layers))
  return out


def random_arch(key, steps: int = STEPS, num_ops: int = len(PRIMITIVES)) -> dict:
  """LHD's random baseline [LHD ``search/Random/``]: alphas and output betas 0.1 N(0, 1), no
  training; discretise ``search_weights`` of it by a policy."""
  return init_arch(key, steps, num_ops, scale=0.1)


def genotype_from_text(text: str):
  """A ``jnas.Genotype``, an ``LHDGenotype`` (its text has ``normal_output=``) or a
  ``jnas.cellspace.SpaceGenotype`` (ENAS / NAO / NSGA-Net) from its text."""
  from jnas import cellspace
  if cellspace.is_space_genotype(text):
    return cellspace.genotype_from_text(text)
  if "normal_output" in text:
    return LHDGenotype.parse(text)
  from jnas.genotype import Genotype
  return Genotype.parse(text)


def genotype_from_dict(d: Mapping):
  """A ``jnas.Genotype``, an ``LHDGenotype`` (``space: 'lhd'``) or a ``jnas.cellspace.SpaceGenotype``
  from its JSON dict."""
  from jnas import cellspace
  if d.get("format") == cellspace.JSON_FORMAT:
    return cellspace.genotype_from_dict(d)
  if d.get("space") == "lhd":
    return LHDGenotype.from_dict(d)
  from jnas.genotype import Genotype
  return Genotype.from_dict(d)


def _filter(pairs, outputs) -> tuple:
  """The pairs that reach an output, scanning the later pairs as [LHD gen_trans.py] does."""
  reach = set(outputs["sum"]) | set(outputs["concat"])
  kept = []
  for k, (op, i, node) in enumerate(pairs):
    if node in reach:
      kept.append(pairs[k])
      continue
    chain = [node]
    for op2, i2, node2 in pairs[k + 1:]:
      if i2 - 2 in chain:
        chain.append(node2)
        if chain[-1] in reach:
          kept.append(pairs[k])
          break
  return tuple(kept)


def _cell(w, out_rows, policy: dict, primitives: Sequence[str], steps: int = STEPS):
  w = np.asarray(w, np.float64)
  n_ops = len(primitives)
  pairs = []
  for node, (lo, hi) in enumerate(node_rows(steps)):
    order, keep = _quantile(w[lo:hi], policy["pairs"])
    for idx in order[:keep]:
      pairs.append((primitives[int(idx) % n_ops], int(idx) // n_ops, node))
  rows = np.asarray(out_rows, np.float64)
  s_order, s_keep = _quantile(rows[0], policy["sum_cumulative"], policy["sum_elementwise"])
  c = policy["concat"]
  if c == 0:
    c_order, c_keep = _quantile(rows[1], 0.0, float(rows[1].mean()))
  elif c < 1:
    c_order, c_keep = _quantile(rows[1], 0.0, c)
  else:
    c_order, c_keep = _quantile(rows[1], c)
  outputs = {"sum": [int(n) for n in s_order[:s_keep]], "concat": [int(n) for n in c_order[:c_keep]]}
  return _filter(tuple(pairs), outputs), outputs


def discretize(weights: Mapping, policy: str = "base", primitives: Sequence[str] = PRIMITIVES,
               steps: int = STEPS) -> LHDGenotype:
  """An LHD genotype from searched weights by ``policy`` (see the module docstring).

  Args:
    weights: per cell type ``t`` the (20, n_ops) joint-softmax probabilities ``weights[t]`` (rows in
      node order: node i's i + 2 inputs, each a row of ops) and the (2, 5) output rows
      ``weights[t + '_output']`` (row 0 the sum path's softmax, row 1 the concat gates' sigmoid).
    policy: 'base', '1m', '3ops' or '4out'.
    steps: nodes per cell (5 in LHD; fewer for small tests).
  """
  if policy not in POLICIES:
    raise ValueError(f"unknown LHD policy {policy!r}; use one of {', '.join(POLICIES)}")
  cells = {}
  for t in CELL_TYPES:
    for key, shape in ((t, (node_rows(steps)[-1][1], len(primitives))), (f"{t}_output", (2, steps))):
      if key not in weights:
        raise ValueError(f"LHD weights lack {key!r}")
      if np.shape(weights[key]) != shape:
        raise ValueError(f"LHD weights[{key!r}] has shape {np.shape(weights[key])}, expected {shape}")
    cells[t] = _cell(weights[t], weights[f"{t}_output"], POLICIES[policy], primitives, steps)
  return LHDGenotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1])
