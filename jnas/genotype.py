"""Genotypes: the discrete cells, their text and JSON forms, and their derivation from alphas.

A ``Genotype`` holds, per cell type, a flat list of ``(op_name, input_index)`` pairs, two per
intermediate node (pairs 2j and 2j+1 feed node j), and the states concatenated at the cell output
[quark0 ``cnn/genotypes.py``]. Input index 0 is the output of cell k-2, 1 of cell k-1, and 2 + j
intermediate node j.

Text forms read and written here:
  * quark0/darts: ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``
    (concat as ``range(a, b)`` or as a list), exactly as the DARTS code prints its namedtuple;
  * pt.darts / NAS-Benchmark: ``normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], ...]``.
Text is parsed with ``ast`` (never ``eval``).

Two extensions for search methods whose cells are not "two inputs per node":
  * ``normal_degree`` / ``reduce_degree``: the number of (op, input) pairs of each node when it is
    not 2 (SNAS keeps every edge with its argmax op, ``none`` included, so node j has j + 2 pairs);
    such cells print in the nested pt.darts form, whose per-node lists carry the degrees;
  * ``fixed_reduce='gdas_frc'``: the reduction cell is GDAS-FRC's fixed cell (``jnas.frc``), with
    no pairs (``reduce=[]``, ``reduce_concat=[]``).
Several pairs of a node may read the same input (GDAS picks the top-2 (op, input) pairs).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from typing import Iterable, Mapping, Sequence

import numpy as np

from jnas import ops, space

JSON_FORMAT = "jnas.genotype"
JSON_VERSION = 2  # 1: two pairs per node and a searched reduction cell (still read and written for those)
FIXED_REDUCE = ("gdas_frc",)

# The DARTS op family's table (``jnas.ops.DARTS_OPS``) less DARTS-'s auxiliary skip, which is no cell op.
KNOWN_OPS = frozenset(ops.OP_NAMES) - {"aux_skip"}

Pairs = tuple[tuple[str, int], ...]


def node_of_pairs(n_pairs: int, degree: tuple[int, ...] | None) -> list[int]:
  """The node each of ``n_pairs`` pairs feeds (2 per node, or per ``degree``)."""
  if degree is None:
    return [k // 2 for k in range(n_pairs)]
  return [j for j, d in enumerate(degree) for _ in range(d)]


def _check_cell(name: str, pairs: Pairs, concat: tuple[int, ...], known_ops, degree=None) -> None:
  if degree is None and (len(pairs) == 0 or len(pairs) % 2):
    raise ValueError(f"genotype {name!r}: expected 2 (op, input) pairs per node, got {len(pairs)} pairs")
  if degree is not None:
    if not degree or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in degree):
      raise ValueError(f"genotype {name}_degree must list each node's number of inputs (>= 1), got {degree!r}")
    if sum(degree) != len(pairs):
      raise ValueError(f"genotype {name}_degree {list(degree)} sums to {sum(degree)}, but the cell has "
                       f"{len(pairs)} pairs")
  nodes = node_of_pairs(len(pairs), degree)
  steps = len(degree) if degree is not None else len(pairs) // 2
  for k, pair in enumerate(pairs):
    if not (isinstance(pair, tuple) and len(pair) == 2):
      raise ValueError(f"genotype {name!r}: entry {k} is {pair!r}, expected (op_name, input_index)")
    op, index = pair
    if not isinstance(op, str):
      raise ValueError(f"genotype {name!r}: entry {k} op {op!r} is not a string")
    if op not in known_ops:
      raise ValueError(f"genotype {name!r}: unknown op {op!r} (known: {sorted(known_ops)})")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
      raise ValueError(f"genotype {name!r}: entry {k} input {index!r} is not an integer")
    node = nodes[k]
    if not 0 <= index < node + space.NUM_INPUTS:
      raise ValueError(
          f"genotype {name!r}: node {node} reads input {index}, out of range 0..{node + 1}")
  if not concat:
    raise ValueError(f"genotype {name}_concat is empty")
  for c in concat:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < steps + 2:
      raise ValueError(f"genotype {name}_concat has {c!r}, expected state indices in 0..{steps + 1}")
  if len(set(concat)) != len(concat):
    raise ValueError(f"genotype {name}_concat repeats a state: {list(concat)}")


def _as_pairs(field: str, value) -> Pairs:
  if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
    raise ValueError(f"genotype {field!r}: expected a list of (op_name, input_index) pairs, got {value!r}")
  pairs = []
  for k, p in enumerate(value):
    if not isinstance(p, (list, tuple)) or len(p) != 2:
      raise ValueError(f"genotype {field!r}: entry {k} is {p!r}, expected (op_name, input_index)")
    op, index = p
    pairs.append((op, int(index) if isinstance(index, np.integer) else index))
  return tuple(pairs)


def _concat_text(c: tuple[int, ...], as_range: bool) -> str:
  """``range(a, b)`` when asked for and the states are consecutive, else ``[a, ...]``."""
  if as_range and list(c) == list(range(c[0], c[0] + len(c))):
    return f"range({c[0]}, {c[-1] + 1})"
  return repr(list(c))


@dataclasses.dataclass(frozen=True)
class Genotype:
  """An immutable DARTS genotype (quark0's namedtuple fields, in order).

  ``concat_style`` only records how the concat lists print (``'list'`` -> ``[2, 3, 4, 5]``,
  ``'range'`` -> ``range(2, 6)``); it takes no part in equality or hashing.
  """

  normal: Pairs
  normal_concat: tuple[int, ...]
  reduce: Pairs
  reduce_concat: tuple[int, ...]
  concat_style: str = dataclasses.field(default="list", compare=False)
  normal_degree: tuple[int, ...] | None = None
  reduce_degree: tuple[int, ...] | None = None
  fixed_reduce: str | None = None

  def __post_init__(self):
    # Normalise lists to tuples (and numpy ints to int) so the value is hashable and comparable.
    for field in ("normal", "reduce"):
      object.__setattr__(self, field, _as_pairs(field, getattr(self, field)))
    for field in ("normal_concat", "reduce_concat"):
      object.__setattr__(self, field, tuple(int(c) if isinstance(c, np.integer) else c
                                            for c in getattr(self, field)))
    for field in ("normal_degree", "reduce_degree"):
      d = getattr(self, field)
      if d is not None:
        d = tuple(int(v) if isinstance(v, np.integer) else v for v in d)
        # Two pairs per node is the default form: store it as None so equal cells compare equal.
        object.__setattr__(self, field, None if d and all(v == 2 for v in d) else d)
    if self.concat_style not in ("list", "range"):
      raise ValueError(f"concat_style must be 'list' or 'range', got {self.concat_style!r}")
    if self.fixed_reduce is not None and self.fixed_reduce not in FIXED_REDUCE:
      raise ValueError(f"unknown fixed_reduce {self.fixed_reduce!r}; known: {FIXED_REDUCE}")
    self.validate()

  def validate(self, known_ops=KNOWN_OPS) -> "Genotype":
    """Raise ``ValueError`` naming the problem if any op, input or concat index is invalid."""
    _check_cell("normal", self.normal, self.normal_concat, known_ops, self.normal_degree)
    if self.fixed_reduce is None:
      _check_cell("reduce", self.reduce, self.reduce_concat, known_ops, self.reduce_degree)
    elif self.reduce or self.reduce_concat or self.reduce_degree:
      raise ValueError(f"a genotype with fixed_reduce={self.fixed_reduce!r} has no reduce pairs; "
                       f"got reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)}")
    return self

  # ----------------------------------------------------------------------------------- structure
  @property
  def steps(self) -> int:
    """Intermediate nodes per cell (both cells must agree for the DARTS macro network)."""
    return len(self.normal_degree) if self.normal_degree is not None else len(self.normal) // 2

  @property
  def standard(self) -> bool:
    """Two pairs per node and a searched reduction cell (the DARTS form, JSON version 1)."""
    return self.normal_degree is None and self.reduce_degree is None and self.fixed_reduce is None

  def cell(self, reduction: bool) -> tuple[Pairs, tuple[int, ...]]:
    return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

  def degree(self, reduction: bool) -> tuple[int, ...] | None:
    return self.reduce_degree if reduction else self.normal_degree

  def nodes(self, reduction: bool) -> list[list[tuple[int, tuple[str, int]]]]:
    """Per intermediate node, its (pair position, (op, input)) entries."""
    pairs = self.cell(reduction)[0]
    degree = self.degree(reduction)
    steps = len(degree) if degree is not None else len(pairs) // 2
    out = [[] for _ in range(steps)]
    for k, node in enumerate(node_of_pairs(len(pairs), degree)):
      out[node].append((k, pairs[k]))
    return out

  def ops(self) -> set[str]:
    return {op for op, _ in self.normal + self.reduce}

  # ---------------------------------------------------------------------------------------- text
  def __str__(self) -> str:
    """The quark0/darts text: ``repr`` of its ``Genotype`` namedtuple (cells with other than two
    inputs per node in the nested pt.darts form; ``fixed_reduce`` as a fifth field)."""
    concat = lambda c: _concat_text(c, self.concat_style == "range") if c else "[]"

    def pairs(p, degree):
      if degree is not None:
        nodes, k = [], 0
        for d in degree:
          nodes.append("[" + ", ".join(f"({op!r}, {i})" for op, i in p[k:k + d]) + "]")
          k += d
        return "[" + ", ".join(nodes) + "]"
      return "[" + ", ".join(f"({op!r}, {i})" for op, i in p) + "]"

    tail = f", fixed_reduce={self.fixed_reduce!r}" if self.fixed_reduce else ""
    return (f"Genotype(normal={pairs(self.normal, self.normal_degree)}, normal_concat={concat(self.normal_concat)}, "
            f"reduce={pairs(self.reduce, self.reduce_degree)}, reduce_concat={concat(self.reduce_concat)}{tail})")

  to_darts_str = __str__

  def __repr__(self) -> str:
    return str(self)

  def to_ptdarts_str(self) -> str:
    """The pt.darts / NAS-Benchmark text (nested per-node lists, concat as ``range``)."""
    def nested(p, degree):
      sizes = degree if degree is not None else (2,) * (len(p) // 2)
      out, k = [], 0
      for d in sizes:
        out.append("[" + ", ".join(f"({op!r}, {i})" for op, i in p[k:k + d]) + "]")
        k += d
      return "[" + ", ".join(out) + "]"

    concat = lambda c: _concat_text(c, True) if c else "[]"
    tail = f", fixed_reduce={self.fixed_reduce!r}" if self.fixed_reduce else ""
    return (f"Genotype(normal={nested(self.normal, self.normal_degree)}, normal_concat={concat(self.normal_concat)}, "
            f"reduce={nested(self.reduce, self.reduce_degree)}, reduce_concat={concat(self.reduce_concat)}{tail})")

  @classmethod
  def parse(cls, text: str) -> "Genotype":
    """Parse quark0 or pt.darts genotype text (see module docstring). Raises ``ValueError``."""
    return parse(text)

  # ---------------------------------------------------------------------------------------- json
  def to_dict(self) -> dict:
    """The JSON object: version 1 for standard cells (as older jnas wrote), 2 with the extensions."""
    d = {
        "format": JSON_FORMAT,
        "version": 1 if self.standard else JSON_VERSION,
        "normal": [[op, i] for op, i in self.normal],
        "normal_concat": list(self.normal_concat),
        "reduce": [[op, i] for op, i in self.reduce],
        "reduce_concat": list(self.reduce_concat),
    }
    for field in ("normal_degree", "reduce_degree", "fixed_reduce"):
      value = getattr(self, field)
      if value is not None:
        d[field] = list(value) if isinstance(value, tuple) else value
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping) -> "Genotype":
    if not isinstance(d, Mapping):
      raise ValueError(f"genotype JSON must be an object, got {type(d).__name__}")
    if d.get("format", JSON_FORMAT) != JSON_FORMAT:
      raise ValueError(f"not a genotype JSON: format {d.get('format')!r}, expected {JSON_FORMAT!r}")
    version = d.get("version", 1)
    if version not in (1, JSON_VERSION):
      raise ValueError(f"genotype JSON version {version} is not supported (this jnas reads 1 and {JSON_VERSION})")
    missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
    if missing:
      raise ValueError(f"genotype JSON lacks {missing}")
    to_pairs = lambda v: tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in v)
    opt = lambda k: tuple(d[k]) if isinstance(d.get(k), list) else d.get(k)
    return cls(to_pairs(d["normal"]), tuple(d["normal_concat"]), to_pairs(d["reduce"]), tuple(d["reduce_concat"]),
               normal_degree=opt("normal_degree"), reduce_degree=opt("reduce_degree"),
               fixed_reduce=d.get("fixed_reduce"))

  @classmethod
  def from_json(cls, text: str) -> "Genotype":
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"malformed genotype JSON: {e}") from None
    return cls.from_dict(d)

  def hash(self) -> str:
    """A stable 16-hex-digit content hash (sha256 of the canonical JSON; style-independent)."""
    return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------- parsing
def _literal(node: ast.AST, what: str):
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError):
    raise ValueError(f"malformed genotype text: {what} is not a literal "
                     f"({ast.unparse(node)[:60]!r})") from None


def _parse_pairs(node: ast.AST, field: str, allow_empty: bool = False) -> tuple[Pairs, tuple[int, ...] | None]:
  """The pairs and, for the nested form, each node's number of pairs."""
  value = _literal(node, field)
  if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
    raise ValueError(f"malformed genotype text: {field} must be a non-empty list, got {value!r}")
  nested = bool(value) and all(isinstance(v, list) for v in value)
  degree = None
  if nested:  # pt.darts: one list of (op, input) per node
    for j, node_list in enumerate(value):
      if not node_list:
        raise ValueError(f"genotype {field!r}: node {j} has no inputs")
    degree = tuple(len(node_list) for node_list in value)
    value = [p for node_list in value for p in node_list]
  pairs = []
  for k, p in enumerate(value):
    if not isinstance(p, (tuple, list)) or len(p) != 2:
      raise ValueError(f"genotype {field!r}: entry {k} is {p!r}, expected (op_name, input_index)")
    pairs.append(tuple(p))
  return tuple(pairs), degree


def _parse_concat(node: ast.AST, field: str) -> tuple[tuple[int, ...], bool]:
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
    args = [_literal(a, field) for a in node.args]
    if not 1 <= len(args) <= 3 or node.keywords or not all(isinstance(a, int) for a in args):
      raise ValueError(f"malformed genotype text: {field}={ast.unparse(node)} is not range(int, int)")
    return tuple(range(*args)), True
  value = _literal(node, field)
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
    raise ValueError(f"malformed genotype text: {field} must be a list of ints or range(a, b), got {value!r}")
  return tuple(value), False


def parse(text: str) -> Genotype:
  """Parse the quark0/darts or pt.darts text of a genotype. Raises ``ValueError`` naming the problem."""
  if not isinstance(text, str):
    raise ValueError(f"genotype text must be a string, got {type(text).__name__}")
  try:
    tree = ast.parse(text.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"malformed genotype text (syntax error at column {e.offset}): {text[:80]!r}") from None
  call = tree.body
  if not (isinstance(call, ast.Call) and isinstance(call.func, (ast.Name, ast.Attribute))
          and (getattr(call.func, "id", None) or getattr(call.func, "attr", None)) == "Genotype"):
    raise ValueError(f"malformed genotype text: expected 'Genotype(normal=..., ...)', got {text[:80]!r}")
  fields = ("normal", "normal_concat", "reduce", "reduce_concat", "fixed_reduce")
  if len(call.args) > 4:
    raise ValueError(f"malformed genotype text: Genotype takes 4 fields, got {len(call.args)} positional")
  given = dict(zip(fields, call.args))
  for kw in call.keywords:
    if kw.arg not in fields:
      raise ValueError(f"malformed genotype text: unknown field {kw.arg!r} (fields: {', '.join(fields)})")
    if kw.arg in given:
      raise ValueError(f"malformed genotype text: field {kw.arg!r} given twice")
    given[kw.arg] = kw.value
  missing = [f for f in fields[:4] if f not in given]
  if missing:
    raise ValueError(f"malformed genotype text: missing field(s) {missing}")
  fixed = _literal(given["fixed_reduce"], "fixed_reduce") if "fixed_reduce" in given else None
  normal, normal_degree = _parse_pairs(given["normal"], "normal")
  reduce, reduce_degree = _parse_pairs(given["reduce"], "reduce", allow_empty=fixed is not None)
  normal_concat, r1 = _parse_concat(given["normal_concat"], "normal_concat")
  reduce_concat, r2 = _parse_concat(given["reduce_concat"], "reduce_concat")
  return Genotype(normal, normal_concat, reduce, reduce_concat, concat_style="range" if (r1 or r2) else "list",
                  normal_degree=normal_degree, reduce_degree=reduce_degree, fixed_reduce=fixed)


def from_ptdarts(normal: Sequence, reduce: Sequence, normal_concat: Iterable[int] = range(2, 6),
                 reduce_concat: Iterable[int] = range(2, 6)) -> Genotype:
  """Build a genotype from pt.darts nested lists (one list of two (op, input) pairs per node)."""
  flat = []
  for field, cell in (("normal", normal), ("reduce", reduce)):
    pairs = []
    for j, node in enumerate(cell):
      if len(node) != 2:
        raise ValueError(f"genotype {field!r}: node {j} has {len(node)} inputs, expected 2")
      pairs.extend(tuple(p) for p in node)
    flat.append(tuple(pairs))
  return Genotype(flat[0], tuple(normal_concat), flat[1], tuple(reduce_concat), concat_style="range")


# ------------------------------------------------------------------------------------ derivation
def _softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def _derive_cell(weights: np.ndarray, steps: int, primitives: Sequence[str], later_inputs_first: bool = False) -> Pairs:
  primitives = list(primitives)
  none = primitives.index("none") if "none" in primitives else None
  candidates = [k for k in range(len(primitives)) if k != none]
  if not candidates:
    raise ValueError("cannot derive a genotype: the op set has no op other than 'none'")
  gene, start = [], 0
  for j in range(steps):
    w = weights[start:start + j + 2]
    strength = [max(w[i][k] for k in candidates) for i in range(j + 2)]
    # Stable sort: equal strengths keep the lower input index first [quark0 Network.genotype]
    # (or the higher one: SP-DARTS ranks the reversed input list).
    order = range(j + 1, -1, -1) if later_inputs_first else range(j + 2)
    best_inputs = sorted(order, key=lambda i: -strength[i])[:2]
    for i in best_inputs:
      k_best = None
      for k in candidates:  # strict '>' keeps the lower op index on ties
        if k_best is None or w[i][k] > w[i][k_best]:
          k_best = k
      gene.append((primitives[k_best], i))
    start += j + 2
  return tuple(gene)


def derive_genotype(alphas: Mapping, *, rule: str = "darts", primitives: Sequence[str] = space.PRIMITIVES,
                    steps: int | None = None) -> Genotype:
  """The discrete cell from architecture weights [DARTS-P §2.4, quark0 ``Network.genotype``].

  For each intermediate node keep the 2 incoming edges whose strongest non-``none`` op weighs most
  (ties to the lower input index) and, on each, that op (ties to the lower op index). Entries of a
  node are listed strongest edge first, as quark0 prints them. ``none`` never appears.

  Args:
    alphas: ``{'normal': (E, n_ops), 'reduce': (E, n_ops)}``, rows in ``jnas.space.edges`` order.
    rule: ``'darts'`` (default; quark0: per-edge softmax first) or ``'ptdarts'`` (pt.darts /
      NAS-Benchmark: raw alphas, which can rank edges differently).
    primitives: names of the alpha columns.
    steps: intermediate nodes; inferred from the number of rows when omitted.

  Returns:
    A ``Genotype`` with concat ``range(2, steps + 2)``.
  """
  if rule not in ("darts", "ptdarts"):
    raise ValueError(f"unknown derivation rule {rule!r}; use 'darts' or 'ptdarts'")
  primitives = list(primitives)
  cells = []
  for name in ("normal", "reduce"):
    if name not in alphas:
      raise ValueError(f"alphas lack the {name!r} entry (expected keys 'normal' and 'reduce')")
    a = np.asarray(alphas[name], dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(primitives):
      raise ValueError(f"alphas[{name!r}] has shape {a.shape}, expected (edges, {len(primitives)})")
    n_steps = steps
    if n_steps is None:
      n_steps = next((s for s in range(1, 64) if space.num_edges(s) == a.shape[0]), None)
      if n_steps is None:
        raise ValueError(f"alphas[{name!r}] has {a.shape[0]} rows, not a cell's edge count (14 for 4 nodes)")
    elif a.shape[0] != space.num_edges(n_steps):
      raise ValueError(f"alphas[{name!r}] has {a.shape[0]} rows, expected {space.num_edges(n_steps)} for {n_steps} nodes")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"alphas[{name!r}] contains NaN or inf")
    w = _softmax(a) if rule == "darts" else a
    cells.append((_derive_cell(w, n_steps, primitives), n_steps))
  (normal, s1), (reduce, _) = cells
  concat = tuple(range(2, s1 + 2))
  return Genotype(normal, concat, reduce, concat, concat_style="range")
