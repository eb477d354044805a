"""K genotypes' networks in one program: ``PackedNetwork`` [design.md, "Many child networks in one program"].

Genotypes of the DARTS space with the same C, cells, macro structure and concat lists have equal
tensor shapes at every cell boundary; only the ops on the kept edges differ. A packed network keeps
the K networks' states stacked, ``(K, B, H, W, C)`` per node, and computes node j of every genotype at
once:

  for each (op, stride) used at node j by any genotype, with instances i = (genotype k_i, edge e_i,
  input state s_i):   h_i = op(w_i, state_{s_i}[k_i])          (one call, vmapped over instances)
  node_j[k] = sum over instances i with k_i = k of drop_path(h_i)  (a sum per genotype)

So a cell is at most (op types x nodes) batched calls whatever K is, and the work is the sum of the
K networks' own work: no op runs on an edge that a genotype does not have (a one-hot supernet over
the kept edges would run every op everywhere). Stems, cell preprocessing, the auxiliary head and the
classifier are vmapped over K; the images are shared (the protocol gives every genotype of a seed
the same data). Drop path draws genotype k's masks exactly as ``Network`` does with genotype k's key,
so a packed forward equals the K networks' forwards (to float summation order).

Parameter layout (``init_variables``; ``unpack`` / ``pack`` convert to and from ``Network``'s):

* ``stem`` (or ``stem0`` / ``stem1``), ``aux_head``, ``classifier``: every leaf ``(K, ...)``;
* ``cells_XX`` (a scanned run of identical cells, as in ``Network``): ``pre0`` / ``pre1`` leaves
  ``(cells, K, ...)``; ``ops["node{j}_{op}_s{stride}"]`` leaves ``(cells, instances, ...)``, the
  instances ordered by (input state, genotype, edge); a GDAS-FRC reduction cell ``(cells, K, ...)``.

The owner of each slice of a leaf (which genotype it belongs to) is known statically
(``owners``); ``finite``, ``select`` and ``clip_by_global_norm`` use it to keep the genotypes of a
pack independent (a NaN in one freezes only that one; gradient clipping uses each genotype's own
norm, as one network trained alone does).

Use::

  net = PackedNetwork(genotypes, C=16, layers=8, num_classes=10, auxiliary=True)
  variables = net.init_variables(key)            # genotype k initialised as Network(g_k) with key
  logits, aux, stats = net.forward(variables["params"], variables["batch_stats"], images,
                                   train=True, key=key, drop_path_prob=0.2)   # (K, B, classes)
  v_k = net.unpack(variables, k)                 # loads into jnas.Network(genotypes[k], ...)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnas import frc, macro, ops
from jnas.genotype import Genotype
from jnas.network import Network, drop_path

__all__ = ["PackedNetwork", "shape_key", "group_by_shape"]

_TOP_PER_GENOTYPE = ("stem", "stem0", "stem1", "aux_head", "classifier")


def shape_key(genotype: Genotype) -> tuple:
  """Genotypes with equal keys have equal shapes at every cell boundary (for equal C, cells and
  macro) and can share a pack: the concat lists (they set the cell output widths) and the fixed
  reduction cell, if any."""
  return (tuple(genotype.normal_concat), tuple(genotype.reduce_concat), genotype.fixed_reduce,
          len(genotype.nodes(False)), None if genotype.fixed_reduce else len(genotype.nodes(True)))


def group_by_shape(genotypes: Sequence[Genotype], pack_size: int) -> list[list[int]]:
  """Indices of ``genotypes`` split into packs of at most ``pack_size`` with one ``shape_key`` each,
  in order of first appearance (a genotype's pack and position depend only on the list)."""
  if pack_size < 1:
    raise ValueError(f"pack_size must be >= 1, got {pack_size}")
  by_key: dict[tuple, list[int]] = {}
  for i, g in enumerate(genotypes):
    if not isinstance(g, Genotype):  # (an LHD genotype: its own program; PackedNetwork is the DARTS cell's)
      by_key[("own", i)] = [i]
      continue
    by_key.setdefault(shape_key(g), []).append(i)
  packs = []
  for idx in by_key.values():
    packs += [idx[j:j + pack_size] for j in range(0, len(idx), pack_size)]
  return sorted(packs, key=lambda p: p[0])


class _Instances(NamedTuple):
  """The (genotype, edge) instances of one (op, stride) at one node, in the order of their params."""
  name: str  # key in the cell's "ops" dict
  op: str
  stride: int
  ks: tuple[int, ...]  # genotype of each instance
  es: tuple[int, ...]  # the op's position in that genotype's cell (Network's "ops" key)
  srcs: tuple[int, ...]  # the state each instance reads


class _Node(NamedTuple):
  groups: tuple[_Instances, ...]
  owners: np.ndarray  # genotype of each instance, groups concatenated
  order: np.ndarray | None  # a permutation to (K, degree) order when every genotype has one degree
  degree: int | None


def _cell_layout(genotypes: Sequence[Genotype], reduction: bool) -> tuple[_Node, ...]:
  steps = len(genotypes[0].nodes(reduction))
  nodes = []
  for j in range(steps):
    found: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    degrees = set()
    for k, g in enumerate(genotypes):
      entries = g.nodes(reduction)[j]
      degrees.add(len(entries))
      for e, (name, src) in entries:
        stride = 2 if (reduction and src < 2) else 1
        found.setdefault((name, stride), []).append((src, k, e))
    groups = []
    for (name, stride) in sorted(found):
      inst = sorted(found[(name, stride)])
      groups.append(_Instances(f"node{j}_{name}_s{stride}", name, stride, tuple(i[1] for i in inst),
                               tuple(i[2] for i in inst), tuple(i[0] for i in inst)))
    owners = np.concatenate([np.asarray(gr.ks, np.int32) for gr in groups])
    order = degree = None
    if len(degrees) == 1:
      degree = degrees.pop()
      order = np.argsort(owners, kind="stable").astype(np.int32)
    nodes.append(_Node(tuple(groups), owners, order, degree))
  return tuple(nodes)


@dataclasses.dataclass(frozen=True, eq=False)
class PackedNetwork:
  """K DARTS-space networks (one per genotype) computed as one, NHWC; see the module docstring.

  Attributes as ``jnas.Network``'s (C, layers, num_classes, auxiliary, drop_path_prob, macro,
  pool_bn, stem_multiplier, conv_impl, scan), shared by every genotype. ``genotypes`` must share
  one ``shape_key`` (``group_by_shape`` splits a list into such packs).
  """

  genotypes: tuple[Genotype, ...]
  C: int = 36
  layers: int = 20
  num_classes: int = 10
  auxiliary: bool = False
  drop_path_prob: float = 0.0
  macro: str = "cifar"
  pool_bn: bool = False
  stem_multiplier: int = 3
  conv_impl: str = "auto"
  scan: bool = True

  def __post_init__(self):
    gs = tuple(self.genotypes) if not isinstance(self.genotypes, Genotype) else (self.genotypes,)
    object.__setattr__(self, "genotypes", gs)
    if not gs:
      raise ValueError("PackedNetwork needs at least one genotype")
    for i, g in enumerate(gs):
      if not isinstance(g, Genotype):
        raise ValueError(f"genotypes[{i}] is a {type(g).__name__}, not a jnas.Genotype")
    keys = [shape_key(g) for g in gs]
    for i, k in enumerate(keys):
      if k != keys[0]:
        raise ValueError(
            f"genotypes[{i}] cannot share a pack with genotypes[0]: their cells differ in shape (concat "
            f"{list(gs[i].normal_concat)}/{list(gs[i].reduce_concat)} vs {list(gs[0].normal_concat)}/"
            f"{list(gs[0].reduce_concat)}, fixed reduction {gs[i].fixed_reduce} vs {gs[0].fixed_reduce}, or "
            "the number of nodes); jnas.packed.group_by_shape splits genotypes into packs")
    settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "genotypes"}
    nets = tuple(Network(g, **settings) for g in gs)
    for n in nets:
      n._check()
    object.__setattr__(self, "_nets", nets)
    object.__setattr__(self, "_layout", {r: (None if (r and gs[0].fixed_reduce) else _cell_layout(gs, r))
                                         for r in (False, True)})
    groups = nets[0].groups()
    object.__setattr__(self, "_groups", {g.name: g for g in groups})

  # ------------------------------------------------------------------------------ structure
  @property
  def K(self) -> int:
    return len(self.genotypes)

  @property
  def networks(self) -> tuple[Network, ...]:
    """``jnas.Network`` of each genotype, with this pack's settings (``unpack``'s layout)."""
    return self._nets

  def groups(self) -> list[macro.Group]:
    return list(self._groups.values())

  @property
  def aux_position(self) -> int:
    return self._nets[0].aux_position

  def _is_frc(self, group: macro.Group) -> bool:
    return group.spec.reduction and self.genotypes[0].fixed_reduce is not None

  def owners(self, path) -> tuple[int, np.ndarray] | None:
    """(axis, genotype of each index along it) of the leaf at ``path`` (a key path into a params
    or batch-stats tree, or into a tree that holds one, such as an optax state); None for a leaf
    outside the packed layout (e.g. an optimizer's step count)."""
    names = [getattr(p, "key", None) for p in path]
    for i, n in enumerate(names):
      if n in _TOP_PER_GENOTYPE:
        return 0, np.arange(self.K)
      if n in self._groups:
        group, rest = self._groups[n], names[i + 1:]
        if rest and rest[0] == "ops" and len(rest) > 1 and not self._is_frc(group):
          for node in self._layout[group.spec.reduction]:
            for inst in node.groups:
              if inst.name == rest[1]:
                return 1, np.asarray(inst.ks)
          raise KeyError(f"no op group {rest[1]!r} in {n}")
        return 1, np.arange(self.K)
    return None

  # ---------------------------------------------------------------------------- pack / unpack
  @staticmethod
  def _split_collections(variables):
    if isinstance(variables, dict) and set(variables) == {"params", "batch_stats"}:
      return True
    return False

  def pack(self, trees: Sequence[Any]) -> Any:
    """Stacks K trees in ``Network``'s layout (``{'params', 'batch_stats'}`` dicts, or params or
    batch-stats trees alone), genotype k's first, into this pack's layout."""
    trees = list(trees)
    if len(trees) != self.K:
      raise ValueError(f"pack needs {self.K} trees (one per genotype), got {len(trees)}")
    if all(self._split_collections(t) for t in trees):
      return {c: self.pack([t[c] for t in trees]) for c in ("params", "batch_stats")}
    stack = lambda axis, xs: jax.tree.map(lambda *a: jnp.stack(a, axis), *xs)
    out = {}
    for top in trees[0]:
      group = self._groups.get(top)
      if group is None:
        out[top] = stack(0, [t[top] for t in trees])
      elif self._is_frc(group):
        out[top] = stack(1, [t[top] for t in trees])
      else:
        cell = {n: stack(1, [t[top][n] for t in trees]) for n in trees[0][top] if n != "ops"}
        cell["ops"] = {inst.name: stack(1, [trees[k][top]["ops"][str(e)] for k, e in zip(inst.ks, inst.es)])
                       for node in self._layout[group.spec.reduction] for inst in node.groups}
        out[top] = cell
    return out

  def unpack(self, tree: Any, k: int) -> Any:
    """Genotype ``k``'s tree in ``jnas.Network``'s layout (the inverse of ``pack``): load it into
    ``self.networks[k]`` (``Network(genotypes[k], ...)``) to evaluate or fine-tune it."""
    if not 0 <= k < self.K:
      raise ValueError(f"genotype index {k} is outside 0..{self.K - 1}")
    if self._split_collections(tree):
      return {c: self.unpack(tree[c], k) for c in ("params", "batch_stats")}
    take = lambda axis, t, i: jax.tree.map(lambda a: a[i] if axis == 0 else a[:, i], t)
    out = {}
    for top, sub in tree.items():
      group = self._groups.get(top)
      if group is None:
        out[top] = take(0, sub, k)
      elif self._is_frc(group):
        out[top] = take(1, sub, k)
      else:
        cell = {n: take(1, v, k) for n, v in sub.items() if n != "ops"}
        cell["ops"] = {}
        for node in self._layout[group.spec.reduction]:
          for inst in node.groups:
            for pos, (kk, e) in enumerate(zip(inst.ks, inst.es)):
              if kk == k:
                cell["ops"][str(e)] = take(1, sub["ops"][inst.name], pos)
        cell["ops"] = dict(sorted(cell["ops"].items(), key=lambda kv: int(kv[0])))
        out[top] = cell
    return out

  def init_variables(self, key) -> dict:
    """``{'params', 'batch_stats'}``: genotype k initialised as ``Network(genotypes[k]).init_variables``
    with ``key`` (one key: the same for every genotype, as retraining does for one seed) or
    ``key[k]`` (a key array of shape (K,))."""
    keys = self._keys(key)
    return self.pack([n.init_variables(keys[k]) for k, n in enumerate(self._nets)])

  def _keys(self, key):
    if key is None:
      return None
    shape = jnp.shape(key)
    if shape == ():
      return [key] * self.K
    if shape != (self.K,):
      raise ValueError(f"key must be one PRNG key or {self.K} keys (one per genotype), got shape {shape}")
    return [key[k] for k in range(self.K)]

  # ----------------------------------------------------------------------------------- apply
  def _cell(self, spec, params, stats, s0, s1, keys, train, drop_prob):
    """One cell of every genotype: s0, s1 ``(K, B, H, W, C_in)``; keys ``(K,)`` or None."""
    impl = self.conv_impl
    if spec.reduction and self.genotypes[0].fixed_reduce:
      if keys is None:
        return jax.vmap(lambda p, s, a, b: frc.apply(p, s, a, b, spec, train, impl))(params, stats, s0, s1)
      return jax.vmap(lambda p, s, a, b, k: frc.apply(p, s, a, b, spec, train, impl, key=k, drop_prob=drop_prob))(
          params, stats, s0, s1, keys)
    pre0, pre1 = self._nets[0]._preprocess(spec)
    new = {"ops": {}}
    vapply = lambda op: jax.vmap(lambda p, s, x: op.apply(p, s, x, train, impl))
    s0, new["pre0"] = vapply(pre0)(params["pre0"], stats["pre0"], s0)
    s1, new["pre1"] = vapply(pre1)(params["pre1"], stats["pre1"], s1)
    states = [s0, s1]
    everyone = tuple(range(self.K))
    for node in self._layout[spec.reduction]:
      outs = []
      for inst in node.groups:
        parts, start = [], 0
        while start < len(inst.srcs):  # instances are sorted by input state: one gather per state
          end = start
          while end < len(inst.srcs) and inst.srcs[end] == inst.srcs[start]:
            end += 1
          ks, x = inst.ks[start:end], states[inst.srcs[start]]
          parts.append(x if ks == everyone else jnp.take(x, jnp.asarray(ks), axis=0))
          start = end
        x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
        op = ops.make_op(inst.op, spec.C, inst.stride, affine=True, pool_bn=self.pool_bn)
        h, new["ops"][inst.name] = vapply(op)(params["ops"][inst.name], stats["ops"][inst.name], x)
        if train and keys is not None and not op.is_identity:
          inst_keys = jax.vmap(jax.random.fold_in)(keys[jnp.asarray(inst.ks)], jnp.asarray(inst.es, jnp.uint32))
          h = jax.vmap(drop_path, (0, 0, None))(inst_keys, h, drop_prob)
        outs.append(h)
      h = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
      if node.degree is not None:
        if len(node.owners) == self.K and np.array_equal(node.owners, np.arange(self.K)):
          states.append(h)
        else:
          h = jnp.take(h, jnp.asarray(node.order), axis=0)
          states.append(jnp.sum(h.reshape((self.K, node.degree) + h.shape[1:]), axis=1))
      else:
        states.append(jax.ops.segment_sum(h, jnp.asarray(node.owners), num_segments=self.K))
    concat = self.genotypes[0].cell(spec.reduction)[1]
    return jnp.concatenate([states[i] for i in concat], axis=-1), new

  def forward(self, params, batch_stats, images, *, train: bool = False, key=None, drop_path_prob=None):
    """Pure forward pass of every genotype: ``(logits (K, B, classes), aux_logits (K, B, classes) or
    None, new_batch_stats)``, as K ``Network.forward`` calls with genotype k's unpacked variables.

    Args:
      images: ``(B, H, W, 3)``, the same batch for every genotype.
      train, drop_path_prob: as ``Network.forward``.
      key: drop-path key: one key for every genotype (``Network.forward(key=key)`` for each), or
        ``(K,)`` keys, one per genotype; None: no drop path.
    """
    n0 = self._nets[0]
    macro.check_images(images, layers=self.layers, auxiliary=self.auxiliary and train, macro=self.macro,
                       what="PackedNetwork.forward", aux_position=self.aux_position)
    p = self.drop_path_prob if drop_path_prob is None else drop_path_prob
    new_stats = {}
    if self.macro == "cifar":
      x, new_stats["stem"] = jax.vmap(lambda w, s: ops.conv_bn_apply(w, s, images, train, padding=1))(
          params["stem"], batch_stats["stem"])
      s0 = s1 = x
    else:
      ps, ss = params["stem0"], batch_stats["stem0"]
      x, n1 = jax.vmap(lambda w, s: ops.conv_bn_apply(w, s, images, train, stride=2, padding=1))(ps["conv1"], ss["conv1"])
      vconv = jax.vmap(lambda w, s, x: ops.conv_bn_apply(w, s, jax.nn.relu(x), train, stride=2, padding=1))
      s0, n2 = vconv(ps["conv2"], ss["conv2"], x)
      s1, new_stats["stem1"] = vconv(params["stem1"], batch_stats["stem1"], s0)
      new_stats["stem0"] = {"conv1": n1, "conv2": n2}

    cell_keys = None
    if train and key is not None:
      keys = self._keys(key)
      n_cells = sum(g.size for g in self._groups.values())
      cell_keys = jnp.stack([jax.random.split(k, n_cells) for k in keys], axis=1)  # (cells, K)

    def cell_fn(spec, cp, cs, c0, c1, k):
      return self._cell(spec, cp, cs, c0, c1, k, train, p)

    taps = (self.aux_position,) if (self.auxiliary and train) else ()
    out, cell_stats, tapped = macro.run_cells(self.groups(), cell_fn, params, batch_stats, s0, s1, taps=taps,
                                              cell_keys=cell_keys)
    new_stats.update(cell_stats)
    aux_logits = None
    if self.auxiliary:
      if train:
        aux_logits, new_stats["aux_head"] = jax.vmap(lambda a, b, x: n0._aux_head(a, b, x, train))(
            params["aux_head"], batch_stats["aux_head"], tapped[self.aux_position])
      else:
        new_stats["aux_head"] = batch_stats["aux_head"]
    logits = jax.vmap(lambda w, x: ops.linear_apply(w, macro.global_avg_pool(x)))(params["classifier"], out)
    return logits, aux_logits, new_stats

  # ---------------------------------------------------------------- one genotype at a time
  def _leaves(self, tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(self.owners(path), leaf) for path, leaf in flat], treedef

  def _sum_per_genotype(self, leaves, per_index) -> jax.Array:
    """``(K,)``: the sum over ``leaves`` ((owners, leaf) pairs) of ``per_index(v)`` ((n,) values
    from ``v``, the leaf with its owner axis first, flattened to (n, -1)), each value credited to
    the genotype that owns its index. Leaves owned index by index (stems, preprocessing, heads)
    add directly; op instances are concatenated and credited by one product with a constant
    one-hot matrix (no scatter)."""
    direct = jnp.zeros((self.K,), jnp.float32)
    parts, owners = [], []
    for (axis, who), leaf in leaves:
      v = per_index(jnp.moveaxis(leaf, axis, 0).reshape(leaf.shape[axis], -1)).astype(jnp.float32)
      if len(who) == self.K and np.array_equal(who, np.arange(self.K)):
        direct = direct + v
      else:
        parts.append(v)
        owners.append(who)
    if parts:
      onehot = np.eye(self.K, dtype=np.float32)[np.concatenate(owners)]
      direct = direct + jnp.concatenate(parts) @ jnp.asarray(onehot)
    return direct

  def _expand(self, values, owned, ndim: int, cache: dict):
    """``values`` (K,) as genotype k's value at every index of the leaf's owner axis, shaped to
    broadcast against a leaf of ``ndim`` axes."""
    axis, who = owned
    key = (axis, ndim, tuple(who))
    if key not in cache:
      v = values if np.array_equal(who, np.arange(self.K)) else jnp.take(values, jnp.asarray(who))
      cache[key] = v.reshape((1,) * axis + (len(who),) + (1,) * (ndim - axis - 1))
    return cache[key]

  def finite(self, *trees) -> jax.Array:
    """``(K,)``: True where every floating-point element of genotype k's parts of ``trees`` is finite
    (leaves outside the packed layout count for every genotype)."""
    owned, shared_bad = [], jnp.zeros((), bool)
    for tree in trees:
      for who, leaf in self._leaves(tree)[0]:
        if not jnp.issubdtype(getattr(leaf, "dtype", jnp.int32), jnp.inexact):
          continue
        if who is None:
          shared_bad = shared_bad | ~jnp.all(jnp.isfinite(leaf))
        else:
          owned.append((who, leaf))
    bad = self._sum_per_genotype(owned, lambda v: jnp.any(~jnp.isfinite(v), axis=1))
    return (bad == 0) & ~shared_bad

  def select(self, ok, new, old):
    """Genotype k's parts of ``new`` where ``ok[k]``, else of ``old``; leaves outside the packed
    layout come from ``new``."""
    ok = jnp.asarray(ok)
    flat_new, treedef = self._leaves(new)
    flat_old = jax.tree.leaves(old)
    out, cache = [], {}
    for (owned, n), o in zip(flat_new, flat_old):
      out.append(n if owned is None else jnp.where(self._expand(ok, owned, n.ndim, cache), n, o))
    return jax.tree_util.tree_unflatten(treedef, out)

  def global_norms(self, tree) -> jax.Array:
    """``(K,)``: the L2 norm of genotype k's parts of ``tree`` (e.g. its gradient)."""
    leaves, _ = self._leaves(tree)
    if any(who is None for who, _ in leaves):
      raise ValueError("global_norms takes a params-layout tree")
    return jnp.sqrt(self._sum_per_genotype(leaves, lambda v: jnp.sum(jnp.square(v.astype(jnp.float32)), axis=1)))

  def clip_by_global_norm(self, grads, max_norm: float):
    """Each genotype's part of ``grads`` clipped to global L2 norm ``max_norm``, as
    ``optax.clip_by_global_norm`` clips one network's gradient."""
    norms = self.global_norms(grads)
    scale = jnp.where(norms < max_norm, 1.0, max_norm / jnp.where(norms < max_norm, 1.0, norms))
    flat, treedef = self._leaves(grads)
    cache = {}
    out = [g * self._expand(scale, owned, g.ndim, cache).astype(g.dtype) for owned, g in flat]
    return jax.tree_util.tree_unflatten(treedef, out)
