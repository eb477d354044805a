"""One description of a cell search space, of which DARTS, ENAS, NAO and NSGA-Net micro are settings.

A cell has 2 inputs (state 0: the output of cell k-2, state 1: of cell k-1) and B intermediate
nodes (state j + 2 for node j); node j reads 2 inputs from its predecessors {0, ..., j + 1}, applies
an op to each and sums them. What differs between spaces [other_spaces.md §5]:

===============  ===============  ===========  =========================  ==============  ===============
space            ops (genome id)  input rule   cell output                stride-2 skip   preprocessing
===============  ===============  ===========  =========================  ==============  ===============
``darts``        8 (quark0)       distinct     all intermediate nodes     FR with ReLU    always
``enas``         5 (ENAS micro)   independent  unused states, inputs too  FR, no ReLU     if needed + s1 conv
``nao``          16 (NB model.py) independent  unused states, inputs too  FR, no ReLU     if needed
``nsganet``      9 (NSGA-Net)     independent  unused intermediate nodes  FR with ReLU    always
===============  ===============  ===========  =========================  ==============  ===============

(plus ``post_concat``: squeeze-and-excitation on NSGA-Net's CIFAR retraining cells, and the
macro fields in ``MacroSpec``). The CNAS space (``jnas.space.CNAS_PRIMITIVES``, 6 nodes) and the LHD
space (``jnas.lhd``: gated nodes, two outputs) are settings of the DARTS row with their op tables
(``CELL_SPACES['cnas']``, ``CELL_SPACES['lhd']``); their networks are ``jnas.Network``'s.

``SpaceGenotype`` is a discrete cell pair in any of these spaces: per cell type, per node, its two
(op name, input) pairs; its concat follows from the space's output rule. Text and JSON forms round
trip; ``to_native`` / ``from_native`` write and read the space's own encoding (ENAS and NAO: the
40-int string ``i1 o1 i2 o2`` per node; NSGA-Net: the vector ``o1 i1 o2 i2``; DARTS: quark0's
``Genotype``).

Random samplers (``sample``): ``'nb'`` is NAS-Benchmark's README snippet for the space, exactly
(other_spaces.md §1.4, §2.4, §3.3; a ``jax.random`` key instead of NumPy's global RNG);
``'uniform'`` draws uniformly over the space's own search encoding. They differ:

* ENAS ``nb``: 20 i.i.d. op ids, and *one* pair of input indices (each in {0, 1}) shared by every
  node of both cells, so no node reads another node (about 3.8e14 reachable cell pairs of 2.6e25);
* NAO ``nb``: op ids 0-10 of NB's ``model.py`` read literally (``nao_ids='literal'``: sep3, sep5,
  avg3, max3, identity, identity, conv1x1, conv3x3, conv1x3+3x1, conv1x7+7x1, max2x2), or shifted by
  5 to the 11-op large space (``nao_ids='large'``); NB does not say which it ran. NAO ``uniform``
  draws from the 5-op small space NB's NAO search explores (``NAO_SEARCH_OPS``);
* NSGA-Net ``nb``: 4 nodes (not 5), 8 ops (``conv_7x1_1x7`` never drawn), 2 distinct inputs per node;
  ``uniform``: 5 nodes, 9 ops, inputs independent (repeats allowed), as the search encodes;
* DARTS: both are the paper's sampler (``jnas.space.random_genotype``).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from typing import Mapping, Sequence

import jax
import numpy as np

from jnas import ops, space, space_ops

__all__ = ["CellSpace", "MacroSpec", "CELL_SPACES", "SPACES", "get_space", "SpaceGenotype", "sample", "SAMPLERS",
           "NAO_SEARCH_OPS", "NSGA_OPS", "genotype_from_text", "genotype_from_dict", "is_space_genotype"]

OUTPUT_RULES = ("all_intermediate", "unused_intermediate", "unused_including_inputs")
INPUT_RULES = ("distinct", "independent")
PREPROCESS = ("always", "if_needed", "if_needed_base")
NSGA_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
            "dil_conv_5x5", "sep_conv_7x7", "conv_7x1_1x7")
NAO_SEARCH_OPS = space_ops.NAO_OPS[:5]  # the small (ENAS-like) space NB's NAO-WS searches


@dataclasses.dataclass(frozen=True)
class MacroSpec:
  """How a space's cells stack into a network (other_spaces.md §5, "Network (macro) fields").

  layout: 'darts' (L cells, reductions at L//3 and 2L//3) or 'inserted' (ENAS / NAO: L + 2 cells
    with reductions at [L//3, 2(L//3) + 1], L = cells - 2; NAO's 3N + 2 is L = 3N).
  aux_after: the auxiliary head reads 'reduction' (the second reduction cell: DARTS, NSGA-Net, NAO)
    or 'after_reduction' (the first cell after it: ENAS).
  head_relu, head_bias: ReLU before the global pool (ENAS) and a bias in the classifier (not ENAS).
  """

  layout: str = "darts"
  aux_after: str = "reduction"
  head_relu: bool = False
  head_bias: bool = True

  def reductions(self, cells: int) -> tuple[int, int]:
    if self.layout == "darts":
      return space.reduction_layers(cells)
    L = cells - 2
    return L // 3, 2 * (L // 3) + 1

  def aux_position(self, cells: int) -> int:
    r = self.reductions(cells)[1]
    return r if self.aux_after == "reduction" else r + 1


@dataclasses.dataclass(frozen=True)
class CellSpace:
  """A cell search space (see the module docstring for the four settings).

  ops: op names, the index is the genome code. op_family: which definitions the names mean
  ('darts' = ``jnas.ops``; 'enas', 'nao' = ``jnas.space_ops``). n_nodes: B. input_rule:
  'distinct' or 'independent' (a node may read one state twice). output_rule: see OUTPUT_RULES.
  reduce_identity_relu: the stride-2 identity's FactorizedReduce starts with a ReLU. preprocess:
  'always' (s0: FR after a reduction, else ReLU-1x1-BN; s1: ReLU-1x1-BN), 'if_needed' (FR on a
  resolution mismatch, 1x1 on a channel mismatch) or 'if_needed_base' (ENAS: and always a
  ReLU-1x1-BN on s1). encoding: the native genome ('darts', 'enas' = i o i o, 'nsga' = o i o i).
  """

  name: str
  ops: tuple[str, ...]
  op_family: str
  n_nodes: int
  input_rule: str
  output_rule: str
  reduce_identity_relu: bool
  preprocess: str
  encoding: str
  macro: MacroSpec = MacroSpec()
  n_inputs_per_node: int = 2
  combine: str = "sum"

  def __post_init__(self):
    if self.input_rule not in INPUT_RULES or self.output_rule not in OUTPUT_RULES or self.preprocess not in PREPROCESS:
      raise ValueError(f"cell space {self.name!r}: bad rule(s) {self.input_rule!r}, {self.output_rule!r}, "
                       f"{self.preprocess!r}")

  def predecessors(self, node: int) -> range:
    """The states node ``node`` (0-based) may read: 0 .. node + 1 (all four spaces)."""
    return range(node + 2)

  def op_index(self, name: str) -> int:
    if name not in self.ops:
      raise ValueError(f"unknown op {name!r} in the {self.name} space; its ops: {', '.join(self.ops)}")
    return self.ops.index(name)

  def concat(self, nodes: Sequence[Sequence[tuple[str, int]]]) -> tuple[int, ...]:
    """The states the cell outputs (concatenated on channels), by the space's output rule."""
    B = len(nodes)
    used = {i for node in nodes for _, i in node}
    if self.output_rule == "all_intermediate":
      return tuple(range(2, B + 2))
    first = 0 if self.output_rule == "unused_including_inputs" else 2
    return tuple(i for i in range(first, B + 2) if i not in used)

  def make_op(self, name: str, C: int, stride: int, affine: bool = True):
    """The op ``name`` of this space on C channels at ``stride``."""
    self.op_index(name)
    if self.op_family in ops.OP_TABLES:
      return ops.make_op(name, C, stride, affine, family=self.op_family)
    return space_ops.make_op(self.op_family, name, C, stride, affine)


CELL_SPACES: dict[str, CellSpace] = {
    "darts": CellSpace("darts", space.PRIMITIVES, "darts", 4, "distinct", "all_intermediate", True, "always", "darts"),
    "enas": CellSpace("enas", space_ops.ENAS_OPS, "enas", 5, "independent", "unused_including_inputs", False,
                      "if_needed_base", "enas", MacroSpec("inserted", "after_reduction", head_relu=True,
                                                          head_bias=False)),
    "nao": CellSpace("nao", space_ops.NAO_OPS, "nao", 5, "independent", "unused_including_inputs", False,
                     "if_needed", "enas", MacroSpec("inserted", "reduction")),
    "nsganet": CellSpace("nsganet", NSGA_OPS, "darts", 5, "independent", "unused_intermediate", True, "always",
                         "nsga"),
    # Settings of the DARTS row with their own op tables (their networks: jnas.Network).
    "cnas": CellSpace("cnas", space.CNAS_PRIMITIVES, "darts", 6, "distinct", "all_intermediate", True, "always",
                      "darts"),
    "lhd": CellSpace("lhd", ops.LHD_OP_NAMES, "lhd", 5, "distinct", "all_intermediate", True, "always",
                     "darts"),
}
SPACES = ("darts", "enas", "nao", "nsganet")  # the spaces of the paper's eight methods


def get_space(name: str) -> CellSpace:
  if isinstance(name, CellSpace):
    return name
  if name not in CELL_SPACES:
    raise ValueError(f"unknown cell space {name!r}; known: {', '.join(CELL_SPACES)}")
  return CELL_SPACES[name]


# -------------------------------------------------------------------------------------- genotype
Node = tuple[tuple[str, int], tuple[str, int]]
JSON_FORMAT = "jnas.space_genotype"


def _nodes(field: str, value, sp: CellSpace) -> tuple[Node, ...]:
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    raise ValueError(f"{sp.name} genotype {field!r}: expected a list of nodes, each 2 (op, input) pairs; got {value!r}")
  nodes = []
  for j, node in enumerate(value):
    if not isinstance(node, Sequence) or len(node) != 2:
      raise ValueError(f"{sp.name} genotype {field!r}: node {j} is {node!r}, expected 2 (op, input) pairs")
    pairs = []
    for k, pair in enumerate(node):
      if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
        raise ValueError(f"{sp.name} genotype {field!r}: node {j} entry {k} is {pair!r}, expected (op, input)")
      op, i = pair
      if not isinstance(op, str) or op not in sp.ops:
        raise ValueError(f"{sp.name} genotype {field!r}: node {j} uses unknown op {op!r}; the {sp.name} space "
                         f"has {', '.join(sp.ops)}")
      if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < j + 2:
        raise ValueError(f"{sp.name} genotype {field!r}: node {j} reads input {i!r}, out of range 0..{j + 1}")
      pairs.append((op, int(i)))
    if sp.input_rule == "distinct" and pairs[0][1] == pairs[1][1]:
      raise ValueError(f"{sp.name} genotype {field!r}: node {j} reads state {pairs[0][1]} twice; the "
                       f"{sp.name} space takes distinct inputs")
    nodes.append(tuple(pairs))
  return tuple(nodes)


@dataclasses.dataclass(frozen=True)
class SpaceGenotype:
  """A cell pair (normal, reduce) of a ``CellSpace``: per node its 2 (op name, input index) pairs.

  The two cells may have different numbers of nodes only if the space allows it (NSGA-Net's random
  cells have 4 nodes, its searched ones 5). Concat lists follow from ``space.output_rule``.
  """

  space: str
  normal: tuple[Node, ...]
  reduce: tuple[Node, ...]

  def __post_init__(self):
    sp = get_space(self.space)
    object.__setattr__(self, "normal", _nodes("normal", self.normal, sp))
    object.__setattr__(self, "reduce", _nodes("reduce", self.reduce, sp))

  @property
  def cell_space(self) -> CellSpace:
    return get_space(self.space)

  @property
  def normal_concat(self) -> tuple[int, ...]:
    return self.cell_space.concat(self.normal)

  @property
  def reduce_concat(self) -> tuple[int, ...]:
    return self.cell_space.concat(self.reduce)

  def nodes(self, reduction: bool) -> tuple[Node, ...]:
    return self.reduce if reduction else self.normal

  def cell(self, reduction: bool):
    """(flat (op, input) pairs, concat): the ``jnas.Genotype.cell`` view."""
    nodes = self.nodes(reduction)
    return tuple(p for n in nodes for p in n), self.cell_space.concat(nodes)

  def ops(self) -> set[str]:
    return {op for cell in (self.normal, self.reduce) for node in cell for op, _ in node}

  # --------------------------------------------------------------------------- text and JSON
  def __str__(self) -> str:
    show = lambda cell: "[" + ", ".join("[" + ", ".join(f"({op!r}, {i})" for op, i in n) + "]" for n in cell) + "]"
    return f"SpaceGenotype(space={self.space!r}, normal={show(self.normal)}, reduce={show(self.reduce)})"

  __repr__ = __str__

  def to_dict(self) -> dict:
    cell = lambda c: [[[op, i] for op, i in n] for n in c]
    return {"format": JSON_FORMAT, "version": 1, "space": self.space, "normal": cell(self.normal),
            "reduce": cell(self.reduce), "normal_concat": list(self.normal_concat),
            "reduce_concat": list(self.reduce_concat), "native": self.to_native()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  def hash(self) -> str:
    """A short content hash (space and cells)."""
    return hashlib.sha256(str(self).encode()).hexdigest()[:12]

  # ---------------------------------------------------------------------------- native codes
  def to_arc(self) -> dict:
    """``{'inputs', 'ops'}`` int arrays (2, B, 2): (cell type, node, branch), op ids of the space's table
    (needs both cells to have the same number of nodes)."""
    if len(self.normal) != len(self.reduce):
      raise ValueError("to_arc needs cells with equal numbers of nodes")
    sp = self.cell_space
    inputs = np.array([[[i for _, i in n] for n in c] for c in (self.normal, self.reduce)], np.int32)
    ops = np.array([[[sp.op_index(op) for op, _ in n] for n in c] for c in (self.normal, self.reduce)], np.int32)
    return {"inputs": inputs, "ops": ops}

  def to_native(self):
    """The space's own encoding: ENAS / NAO a string of ints ``i1 o1 i2 o2`` per node (normal then
    reduce), NSGA-Net a list ``o1 i1 o2 i2`` per block, DARTS quark0's Genotype text."""
    sp = self.cell_space
    if sp.encoding == "darts":
      return str(self.to_darts())
    ints = []
    for cell in (self.normal, self.reduce):
      for node in cell:
        for op, i in node:
          ints += [i, sp.op_index(op)] if sp.encoding == "enas" else [sp.op_index(op), i]
    return " ".join(map(str, ints)) if sp.encoding == "enas" else ints

  def to_darts(self, concat: str = "space"):
    """The same cells as a ``jnas.Genotype`` (op names kept; concat: 'space' = this space's rule,
    'all' = every intermediate node, NB's ENAS -> DARTS conversion for the 224-px datasets)."""
    from jnas.genotype import Genotype
    flat = lambda c: tuple(p for n in c for p in n)
    cc = (lambda c: tuple(range(2, len(c) + 2))) if concat == "all" else self.cell_space.concat
    return Genotype(flat(self.normal), cc(self.normal), flat(self.reduce), cc(self.reduce))


def from_arc(space_name: str, arc: Mapping) -> SpaceGenotype:
  """A genotype from ``{'inputs', 'ops'}`` arrays (2, B, 2) of op ids."""
  sp = get_space(space_name)
  inputs, ops = np.asarray(arc["inputs"]), np.asarray(arc["ops"])
  if inputs.shape != ops.shape or inputs.ndim != 3 or inputs.shape[0] != 2 or inputs.shape[2] != 2:
    raise ValueError(f"an arc needs inputs and ops of shape (2, B, 2), got {inputs.shape} and {ops.shape}")
  if ops.min() < 0 or ops.max() >= len(sp.ops):
    raise ValueError(f"arc op ids must lie in 0..{len(sp.ops) - 1} for the {sp.name} space, got {ops.min()}..{ops.max()}")
  cells = [tuple(tuple((sp.ops[int(ops[c, j, k])], int(inputs[c, j, k])) for k in range(2))
                 for j in range(inputs.shape[1])) for c in range(2)]
  return SpaceGenotype(sp.name, cells[0], cells[1])


def from_native(space_name: str, code) -> SpaceGenotype:
  """Read the space's own encoding (``SpaceGenotype.to_native``): a string or list of ints."""
  sp = get_space(space_name)
  if sp.encoding == "darts":
    from jnas.genotype import Genotype
    g = code if not isinstance(code, str) else Genotype.parse(code)
    nodes = lambda pairs: tuple(tuple(pairs[2 * j:2 * j + 2]) for j in range(len(pairs) // 2))
    return SpaceGenotype(sp.name, nodes(g.normal), nodes(g.reduce))
  if isinstance(code, str):
    try:
      ints = [int(t) for t in code.replace(",", " ").split()]
    except ValueError:
      raise ValueError(f"{sp.name} code must be whitespace-separated integers, got {code!r}") from None
  else:
    ints = [int(t) for t in code]
  if not ints or len(ints) % 8:
    raise ValueError(f"{sp.name} code must hold 4 integers per node for 2 cells of equal size (a multiple of 8), "
                     f"got {len(ints)}")
  B = len(ints) // 8
  cells = []
  for c in range(2):
    nodes = []
    for j in range(B):
      a, b, d, e = ints[(c * B + j) * 4:(c * B + j) * 4 + 4]
      (i1, o1, i2, o2) = (a, b, d, e) if sp.encoding == "enas" else (b, a, e, d)
      for o in (o1, o2):
        if not 0 <= o < len(sp.ops):
          raise ValueError(f"{sp.name} code: node {j} of cell {c} has op id {o}, outside 0..{len(sp.ops) - 1}")
      nodes.append(((sp.ops[o1], i1), (sp.ops[o2], i2)))
    cells.append(tuple(nodes))
  return SpaceGenotype(sp.name, cells[0], cells[1])


def genotype_from_dict(d: Mapping) -> SpaceGenotype:
  if not isinstance(d, Mapping) or d.get("format") != JSON_FORMAT:
    raise ValueError(f"not a {JSON_FORMAT} object: {str(d)[:80]!r}")
  for k in ("space", "normal", "reduce"):
    if k not in d:
      raise ValueError(f"{JSON_FORMAT} object lacks {k!r}")
  return SpaceGenotype(d["space"], d["normal"], d["reduce"])


def genotype_from_text(text: str) -> SpaceGenotype:
  """Parse ``str(SpaceGenotype)`` (with ``ast``, never ``eval``) or its JSON."""
  text = text.strip()
  if text.startswith("{"):
    return genotype_from_dict(json.loads(text))
  if not text.startswith("SpaceGenotype(") or not text.endswith(")"):
    raise ValueError(f"not a SpaceGenotype text: {text[:60]!r}")
  try:
    call = ast.parse(text, mode="eval").body
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"malformed SpaceGenotype text: {e}") from None
  missing = {"space", "normal", "reduce"} - set(kw)
  if missing:
    raise ValueError(f"SpaceGenotype text lacks {sorted(missing)}")
  return SpaceGenotype(kw["space"], kw["normal"], kw["reduce"])


def is_space_genotype(text: str) -> bool:
  t = text.strip()
  return t.startswith("SpaceGenotype(") or (t.startswith("{") and JSON_FORMAT in t)


# --------------------------------------------------------------------------------------- samplers
SAMPLERS = ("nb", "uniform")


def _randint(key, shape, hi):
  return np.asarray(jax.random.randint(key, shape, 0, hi))


def sample(key, space_name: str, sampler: str = "nb", *, nao_ids: str = "literal", n_nodes: int | None = None):
  """One random architecture of the space (see the module docstring for 'nb' vs 'uniform');
  ``n_nodes``: B of the 'uniform' sampler (default the space's).

  Returns a ``SpaceGenotype`` (a ``jnas.Genotype`` for the DARTS space).
  """
  sp = get_space(space_name)
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
  if nao_ids not in ("literal", "large"):
    raise ValueError(f"nao_ids must be 'literal' (NB's model.py ids 0-10) or 'large' (ids 5-15), got {nao_ids!r}")
  if sp.name == "darts":
    return space.random_genotype(key)
  if sp.name not in ("enas", "nao", "nsganet"):
    raise ValueError(f"no random sampler for the {sp.name} space here; use one of enas, nao, nsganet, darts")
  k_ops, k_links, k_more = jax.random.split(key, 3)
  B = sp.n_nodes
  if n_nodes is not None:
    if sampler != "uniform" or n_nodes < 1:
      raise ValueError("n_nodes (>= 1) applies to the 'uniform' sampler only")
    B = n_nodes
  if sp.name == "enas" and sampler == "nb":
    ops = _randint(k_ops, (20,), 5)
    links = _randint(k_links, (20,), 2)  # (only links[0] and links[1] are used, as in NB's snippet)
    def cell(first, last):
      ids = list(ops[first:first + 8]) + list(ops[last:last + 2])
      return tuple(((sp.ops[ids[2 * j]], int(links[0])), (sp.ops[ids[2 * j + 1]], int(links[1]))) for j in range(B))
    return SpaceGenotype("enas", cell(0, 16), cell(8, 18))
  if sp.name == "nsganet" and sampler == "nb":
    ops = _randint(k_ops, (16,), 8)
    cells = []
    for c in range(2):
      nodes = []
      for j in range(4):
        k = jax.random.fold_in(k_links, 4 * c + j)
        a, b = (int(v) for v in np.asarray(jax.random.choice(k, j + 2, (2,), replace=False)))
        nodes.append(((sp.ops[int(ops[8 * c + 2 * j])], a), (sp.ops[int(ops[8 * c + 2 * j + 1])], b)))
      cells.append(tuple(nodes))
    return SpaceGenotype("nsganet", cells[0], cells[1])
  # independent inputs, i.i.d. ops: NAO's generate_arch ('nb') and every space's 'uniform'
  if sp.name == "nao":
    op_ids = np.arange(11) + (5 if nao_ids == "large" else 0) if sampler == "nb" else np.arange(5)
  else:
    op_ids = np.arange(len(sp.ops))
  cells = []
  for c in range(2):
    nodes = []
    for j in range(B):
      k = jax.random.fold_in(k_more, 2 * B * c + j)
      k_i, k_o = jax.random.split(k)
      ins = _randint(k_i, (2,), j + 2)
      ops = op_ids[_randint(k_o, (2,), len(op_ids))]
      nodes.append(tuple((sp.ops[int(o)], int(i)) for o, i in zip(ops, ins)))
    cells.append(tuple(nodes))
  return SpaceGenotype(sp.name, cells[0], cells[1])


def samples(key, space_name: str, n: int, sampler: str = "nb", **kwargs) -> list:
  """``n`` independent draws (``sample`` on ``n`` keys split from ``key``)."""
  return [sample(k, space_name, sampler, **kwargs) for k in jax.random.split(key, n)]
