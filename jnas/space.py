"""The DARTS search space: primitives, cell topology and the paper's random sampler.

A cell has 2 input nodes (the outputs of cells k-2 and k-1) and ``steps`` intermediate nodes; node
``j`` (0-based) may read from any of its ``j + 2`` predecessors, so a supernet cell has
``2 + 3 + ... + (steps + 1)`` edges (14 for ``steps=4``) [DARTS-P §3.1.1]. Edges are numbered node
by node, predecessor by predecessor, exactly as quark0/darts orders ``alphas_normal``.

References:
  quark0/darts ``cnn/genotypes.py`` (PRIMITIVES), ``cnn/model_search.py`` (edge order);
  Yang et al. 2020 §3.1 and NAS-Benchmark ``DARTS/README.md`` (random sampling).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# The 8 DARTS primitives, in the quark0 order (``none`` first).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Ops used only by the published NASNet/AmoebaNet cells (quark0 ``operations.py``).
EXTRA_OPS: tuple[str, ...] = ("sep_conv_7x7", "conv_7x1_1x7")

# The "modified" op set of Yang et al. §5.2 (macro vs micro study): plain convolutions and max
# pools; see ``jnas.ops`` for their exact definitions (the paper does not give them).
MACRO_MICRO_PRIMITIVES: tuple[str, ...] = (
    "none",
    "conv_1x1",
    "conv_3x3",
    "conv_7x7",
    "conv_11x11",
    "max_pool_3x3",
    "max_pool_5x5",
    "skip_connect",
)

# The CNAS op set, in its index order [tianbaochou/CNAS ``darts/operations.py`` PRIMITIVES]: no 5x5
# convs; squeeze-and-excitation ``cweight_com`` and the ShuffleNet unit ``shuffle_conv_3x3``
# (definitions in ``jnas.ops``).
CNAS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "skip_connect",
    "cweight_com",
    "avg_pool_3x3",
    "max_pool_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
    "shuffle_conv_3x3",
)

STEPS = 4  # intermediate nodes per cell (DARTS); CNAS uses 6.
NUM_INPUTS = 2


def num_edges(steps: int = STEPS) -> int:
  """Number of supernet edges in a cell: sum_{j<steps} (j + 2); 14 for steps=4."""
  return sum(j + NUM_INPUTS for j in range(steps))


@functools.lru_cache(maxsize=None)
def edges(steps: int = STEPS) -> tuple[tuple[int, int], ...]:
  """The cell's edges as (source, target_node) pairs in alpha-row order.

  ``source`` indexes the cell's states (0, 1: cell inputs; 2 + j: intermediate node j) and
  ``target_node`` the intermediate node (0-based).
  """
  return tuple((i, j) for j in range(steps) for i in range(j + NUM_INPUTS))


def edge_index(source: int, node: int) -> int:
  """Alpha row of the edge from state ``source`` into intermediate node ``node``."""
  if not 0 <= source < node + NUM_INPUTS:
    raise ValueError(f"node {node} has no input {source} (inputs are 0..{node + 1})")
  return sum(j + NUM_INPUTS for j in range(node)) + source


def is_reduction_edge(source: int) -> bool:
  """In a reduction cell, ops reading a cell input (source 0 or 1) have stride 2 [DARTS-P §3.1.1]."""
  return source < NUM_INPUTS


def reduction_layers(layers: int) -> tuple[int, int]:
  """Indices of the two reduction cells, layers//3 and 2*layers//3 [quark0 model.py]."""
  return layers // 3, 2 * layers // 3


def _sample_cell(key, steps: int, num_ops: int, none_index: int | None):
  """One cell as arrays: inputs (steps, 2) and op indices (steps, 2).

  Per node j, 2 distinct inputs uniform among its j+2 predecessors (the top-2 of i.i.d. uniform
  scores), and per chosen edge an op uniform over the ops other than ``none``.
  """
  k_in, k_op = jax.random.split(key)
  in_keys = jax.random.split(k_in, steps)
  inputs = []
  for j in range(steps):
    scores = jax.random.uniform(in_keys[j], (j + NUM_INPUTS,))
    inputs.append(jnp.argsort(-scores)[:2])
  inputs = jnp.stack(inputs)
  choices = np.array([o for o in range(num_ops) if o != none_index])
  ops = jnp.asarray(choices)[jax.random.randint(k_op, (steps, 2), 0, len(choices))]
  return inputs, ops


@functools.partial(jax.jit, static_argnames=("steps", "num_ops", "none_index", "max_skip", "skip_index"))
def _sample_arrays(key, *, steps, num_ops, none_index, max_skip, skip_index):
  k_normal, k_reduce = jax.random.split(key)

  def draw_normal(k):
    return _sample_cell(k, steps, num_ops, none_index)

  normal = draw_normal(k_normal)
  if max_skip is not None:
    # Rejection sampling: uniform over the normal cells with at most ``max_skip`` skip-connects.
    def too_many(carry):
      _, (_, ops) = carry
      return jnp.sum(ops == skip_index) > max_skip

    def redraw(carry):
      k, _ = carry
      k, sub = jax.random.split(k)
      return k, draw_normal(sub)

    _, normal = jax.lax.while_loop(too_many, redraw, (jax.random.fold_in(k_normal, 1), normal))
  reduce = _sample_cell(k_reduce, steps, num_ops, none_index)
  return normal, reduce


def random_genotype(key, *, steps: int = STEPS, primitives=PRIMITIVES, max_skip_connect=None):
  """The paper's random sampler over the DARTS space [Yang et al. §3.1, NAS-Benchmark].

  For each intermediate node: 2 distinct inputs uniform among its predecessors; on each chosen edge
  an op uniform over the non-``none`` primitives. Normal and reduction cells are independent.
  This equals what NAS-Benchmark does (parse a genotype from 1e-3·N(0,1) alphas).

  Args:
    key: a JAX PRNG key.
    steps: intermediate nodes per cell.
    primitives: the op set (``none``, if present, is never drawn).
    max_skip_connect: if set, at most this many ``skip_connect`` in the normal cell (the P-DARTS
      rule; PDARTS uses 2), by rejection sampling so the result is uniform over allowed cells.

  Returns:
    A ``jnas.Genotype`` with concat ``range(2, steps + 2)``.
  """
  from jnas.genotype import Genotype  # genotype imports space

  primitives = tuple(primitives)
  none_index = primitives.index("none") if "none" in primitives else None
  skip_index = primitives.index("skip_connect") if "skip_connect" in primitives else -1
  if max_skip_connect is not None and max_skip_connect < 0:
    raise ValueError(f"max_skip_connect must be >= 0, got {max_skip_connect}")
  normal, reduce = _sample_arrays(
      key, steps=steps, num_ops=len(primitives), none_index=none_index,
      max_skip=max_skip_connect, skip_index=skip_index)
  normal, reduce = jax.device_get((normal, reduce))

  def to_pairs(arrays):
    inputs, ops = arrays
    return tuple((primitives[int(ops[j, k])], int(inputs[j, k])) for j in range(steps) for k in range(2))

  concat = tuple(range(NUM_INPUTS, steps + NUM_INPUTS))
  return Genotype(to_pairs(normal), concat, to_pairs(reduce), concat, concat_style="range")


def random_genotypes(key, n: int, **kwargs):
  """``n`` independent random genotypes (``random_genotype`` on ``n`` keys split from ``key``)."""
  return [random_genotype(k, **kwargs) for k in jax.random.split(key, n)]
