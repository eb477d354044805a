"""The macro structure shared by the supernet and the discrete networks: which cells reduce, how
channels grow, and running a stack of cells with ``lax.scan`` over runs of identical cells.

Channel bookkeeping [quark0 ``model.py``]: (C_{k-2}, C_{k-1}, C_cur) start at (stem, stem, C);
the cells at layers//3 and 2*layers//3 are reductions and double C_cur; after each cell
C_{k-2} <- C_{k-1}, C_{k-1} <- multiplier * C_cur. A cell after a reduction reads its k-2 input at
twice the resolution, so its preprocess0 is a FactorizedReduce.

Consecutive cells with equal ``CellSpec`` have equal shapes and structure; their parameters are
stacked on a leading axis and run with one ``lax.scan``, which keeps the traced program (and the
compile time) small: DARTS_V2 at 20 cells compiles 9 cell bodies instead of 20.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jnas import ops, space


class CellSpec(NamedTuple):
  reduction: bool
  reduction_prev: bool
  C_pp: int  # channels of the k-2 input
  C_p: int  # channels of the k-1 input
  C: int  # channels of each node inside the cell


class Group(NamedTuple):
  name: str  # key of the group's stacked parameters, e.g. 'cells_02'
  start: int  # index of its first cell
  size: int  # number of consecutive identical cells
  spec: CellSpec


def cell_plan(C: int, layers: int, *, C_stem: int, multiplier_normal: int, multiplier_reduce: int,
              reduction_prev_first: bool = False, C_stem_prev: int | None = None) -> list[CellSpec]:
  """Per-cell specs of a DARTS-style stack [quark0 ``NetworkCIFAR`` / ``NetworkImageNet``]."""
  if layers < 1:
    raise ValueError(f"a network needs at least 1 cell, got layers={layers}")
  if C < 1:
    raise ValueError(f"initial channels C must be >= 1, got {C}")
  reductions = set(space.reduction_layers(layers))
  C_pp, C_p, C_cur = (C_stem_prev if C_stem_prev is not None else C_stem), C_stem, C
  reduction_prev = reduction_prev_first
  plan = []
  for i in range(layers):
    reduction = i in reductions
    if reduction:
      C_cur *= 2
    plan.append(CellSpec(reduction, reduction_prev, C_pp, C_p, C_cur))
    multiplier = multiplier_reduce if reduction else multiplier_normal
    C_pp, C_p, reduction_prev = C_p, multiplier * C_cur, reduction
  return plan


def lhd_cell_plan(C: int, layers: int, *, C_stem: int, multiplier_normal: int, multiplier_reduce: int) -> list[CellSpec]:
  """Per-cell specs of an LHD stack [LHD ``search/concate_sum_five_sig.py`` ``Network``]: a cell reads
  the previous cell's two outputs, its sum path (``C_pp`` = that cell's C; the first cell: the C-wide
  stem) and its concat path (``C_p`` = multiplier * C; the first cell: the ``C_stem``-wide stem),
  both at the same resolution (``reduction_prev`` is False throughout: no FactorizedReduce)."""
  if layers < 1:
    raise ValueError(f"a network needs at least 1 cell, got layers={layers}")
  if C < 1:
    raise ValueError(f"initial channels C must be >= 1, got {C}")
  reductions = set(space.reduction_layers(layers))
  C_pp, C_p, C_cur, plan = C, C_stem, C, []
  for i in range(layers):
    reduction = i in reductions
    if reduction:
      C_cur *= 2
    plan.append(CellSpec(reduction, False, C_pp, C_p, C_cur))
    C_pp, C_p = C_cur, (multiplier_reduce if reduction else multiplier_normal) * C_cur
  return plan


def group_cells(plan: list[CellSpec], scan: bool = True) -> list[Group]:
  """Split the plan into runs of identical consecutive cells (singletons when ``scan=False``)."""
  groups = []
  for i, spec in enumerate(plan):
    if scan and groups and groups[-1].spec == spec:
      last = groups[-1]
      groups[-1] = last._replace(size=last.size + 1)
    else:
      groups.append(Group(f"cells_{i:02d}", i, 1, spec))
  return groups


def stem_init(key, macro: str, C: int, stem_multiplier: int = 3) -> tuple[dict, dict]:
  """The stem's (params, batch_stats) [quark0 ``model.py``]. 'cifar': one 3x3 conv + BN, 3 -> 3C
  (``stem``); 'imagenet': ``stem0`` = conv s2 (3 -> C/2) + BN + ReLU + conv s2 (C/2 -> C) + BN and
  ``stem1`` = ReLU + conv s2 (C -> C) + BN."""
  if macro == "cifar":
    p, s = ops.conv_bn_init(key, 3, 3, 3, stem_multiplier * C)
    return {"stem": p}, {"stem": s}
  k0, k1, k2 = jax.random.split(key, 3)
  a, sa = ops.conv_bn_init(k0, 3, 3, 3, C // 2)
  b, sb = ops.conv_bn_init(k1, 3, 3, C // 2, C)
  c, sc = ops.conv_bn_init(k2, 3, 3, C, C)
  return {"stem0": {"conv1": a, "conv2": b}, "stem1": c}, {"stem0": {"conv1": sa, "conv2": sb}, "stem1": sc}


def stem_apply(params: dict, stats: dict, images, train: bool, macro: str):
  """(s0, s1, new stem statistics): the two inputs of the first cell (both the stem's output for
  'cifar'; stem0 at 1/4 and stem1 at 1/8 of the resolution for 'imagenet')."""
  if macro == "cifar":
    x, st = ops.conv_bn_apply(params["stem"], stats["stem"], images, train, padding=1)
    return x, x, {"stem": st}
  ps, ss = params["stem0"], stats["stem0"]
  x, n1 = ops.conv_bn_apply(ps["conv1"], ss["conv1"], images, train, stride=2, padding=1)
  s0, n2 = ops.conv_bn_apply(ps["conv2"], ss["conv2"], jax.nn.relu(x), train, stride=2, padding=1)
  s1, n3 = ops.conv_bn_apply(params["stem1"], stats["stem1"], jax.nn.relu(s0), train, stride=2, padding=1)
  return s0, s1, {"stem0": {"conv1": n1, "conv2": n2}, "stem1": n3}


def stack_init(init_fn: Callable, key, n: int):
  """``n`` independent initialisations of one cell, stacked on a leading axis."""
  return jax.vmap(init_fn)(jax.random.split(key, n))


CellFn = Callable  # (spec, params, stats, s0, s1, key) -> (out, new_stats)


CHAINS = ("darts", "outputs")


def run_cells(groups: list[Group], cell_fn: CellFn, params: dict, stats: dict, s0, s1, key=None,
              taps: tuple[int, ...] = (), cell_keys=None, chain: str = "darts"):
  """Run the stack; return (s1 after the last cell, new stats, {tap cell index: its output}).

  ``chain``: how a cell's output feeds the next: 'darts' (the next reads (s1, out): the outputs of
  cells k-2 and k-1) or 'outputs' (LHD: a cell returns two outputs (a, b), and the next reads
  them; the result and the taps are then the pairs).

  ``key`` (optional) is split into one key per cell, passed to ``cell_fn`` (drop path); or
  ``cell_keys`` gives them (leading axis: cells; a packed network passes (cells, K) keys).
  A tapped cell must end its group (reduction cells, where the auxiliary head sits, always do).
  """
  n_cells = sum(g.size for g in groups)
  if cell_keys is None and key is not None:
    cell_keys = jax.random.split(key, n_cells)
  new_stats, tapped = {}, {}
  for g in groups:
    p, s = params[g.name], stats[g.name]
    keys = cell_keys[g.start:g.start + g.size] if cell_keys is not None else None
    if g.size == 1:
      take = lambda t: jax.tree.map(lambda a: a[0], t)
      out, ns = cell_fn(g.spec, take(p), take(s), s0, s1, None if keys is None else keys[0])
      ns = jax.tree.map(lambda a: a[None], ns)
      prev, out = out if chain == "outputs" else (s1, out)
    else:
      def body(carry, xs, spec=g.spec):
        c0, c1 = carry
        cp, cs, ck = xs
        out, ns = cell_fn(spec, cp, cs, c0, c1, ck)
        return (tuple(out) if chain == "outputs" else (c1, out)), ns

      (prev, out), ns = jax.lax.scan(body, (s0, s1), (p, s, keys))
    for t in taps:
      if g.start <= t < g.start + g.size and t != g.start + g.size - 1:
        raise ValueError(f"cell {t} is tapped but is not the last cell of its scanned group")
    if g.start + g.size - 1 in taps:
      tapped[g.start + g.size - 1] = (prev, out) if chain == "outputs" else out
    new_stats[g.name] = ns
    s0, s1 = prev, out
  return ((s0, s1) if chain == "outputs" else s1), new_stats, tapped


def declare_variables(module, init_variables):
  """Declare the linen params / batch_stats of ``init_variables`` (one linen variable per top-level
  entry); returns (params, {name: batch_stats variable}). Values are built once, at ``init``;
  during ``apply`` linen only checks shapes, which zeros of the right shape satisfy."""
  shapes = jax.eval_shape(init_variables, jax.random.key(0))
  built = init_variables(module.make_rng("params")) if module.is_initializing() else None

  def value(collection, name):
    if built is not None:
      return built[collection][name]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[collection][name])

  params = {n: module.param(n, lambda _, n=n: value("params", n)) for n in shapes["params"]}
  stats = {n: module.variable("batch_stats", n, lambda n=n: value("batch_stats", n)) for n in shapes["batch_stats"]}
  return params, stats


def linen_forward(module, images, train: bool, drop_path_prob):
  """A network's linen ``__call__`` on its pure ``init_variables`` / ``forward``: declare the
  variables, draw the 'drop_path' key when training, write the new batch statistics back when the
  collection is mutable; returns (logits, aux_logits)."""
  params, stats = declare_variables(module, module.init_variables)
  key = module.make_rng("drop_path") if (train and module.has_rng("drop_path")) else None
  logits, aux, new_stats = module.forward(params, {n: v.value for n, v in stats.items()}, images,
                                          train=train, key=key, drop_path_prob=drop_path_prob)
  if train and not module.is_initializing() and module.is_mutable_collection("batch_stats"):
    for n, v in stats.items():
      v.value = new_stats[n]
  return logits, aux


def global_avg_pool(x):
  return jnp.mean(x, axis=(1, 2))


def check_images(images, *, layers: int, auxiliary: bool = False, macro: str = "cifar", what: str = "network",
                 aux_position: int | None = None, reductions: tuple[int, ...] | None = None) -> None:
  """Raises ``ValueError`` naming the problem if ``images`` cannot go through a DARTS-style stack.

  Checked (all static, so this costs nothing under ``jit``): NHWC with 3 channels; a float dtype
  (uint8 straight from ``jnas.data`` must be normalised first: ``jnas.data.normalize``); every
  reduction cell's input even-sized (its FactorizedReduce halves x and x[1:, 1:], which differ on
  odd sizes); the auxiliary head's input 8-10 px ('cifar': 5x5 pool stride 3, then a 2x2 conv to
  1x1) or 7-8 px ('imagenet': stride 2).
  """
  shape = tuple(getattr(images, "shape", ()))
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{what}: images must be (batch, height, width, 3) NHWC, got shape {shape}")
  dtype = getattr(images, "dtype", None)
  if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{what}: images are {dtype}; normalise them to floats first "
                     "(jnas.data.normalize(images, mean, std), as the search and training steps do)")
  reductions = set(space.reduction_layers(layers) if reductions is None else reductions)
  h, w = shape[1], shape[2]
  if macro != "cifar":  # the ImageNet stems: three stride-2 convs (ceil each)
    for _ in range(3):
      h, w = -(-h // 2), -(-w // 2)
  tap = 2 * layers // 3 if aux_position is None else aux_position
  for i in range(layers):
    if i in reductions:
      if h % 2 or w % 2 or h < 2 or w < 2:
        raise ValueError(f"{what}: images of {shape[1]}x{shape[2]} px reach reduction cell {i} at {h}x{w}; "
                         f"a reduction needs an even size there (use a height and width divisible by "
                         f"{2 ** len(reductions)}{', after the stem' if macro != 'cifar' else ''})")
      h, w = h // 2, w // 2
    if auxiliary and i == tap:
      lo, hi = (8, 10) if macro == "cifar" else (7, 8)
      if not (lo <= h <= hi and lo <= w <= hi):
        raise ValueError(f"{what}: the auxiliary head (after cell {i}) needs a {lo}-{hi} px map, and images of "
                         f"{shape[1]}x{shape[2]} px give {h}x{w} there; use "
                         f"{'32' if macro == 'cifar' else '224'}-px images or turn the auxiliary head off")
