"""A search method on another cell space: the LHD cell as a setting (``SearchConfig.space='lhd'``).

LHD (Zhang and Ding, ICML 2023; chaoji90/LHD ``search/concate_sum_five_sig.py``) keeps the DARTS
method and changes what it relaxes:

* node i's mixing weights are *one* distribution over all its (input, op) pairs, not one per edge:
  ``inputSoftmax`` is softmax(alpha[rows of node i].flatten() / T);
* each cell type has output parameters beta (2, steps), init 1e-3 N(0, 1): the sum path's weights
  a = softmax(beta_0 / T) and the concat gates g = sigmoid(beta_1) (``jnas.SearchNetwork`` with
  ``cell_space='lhd'`` applies them);
* the result is discretised by the benchmark's policies (``jnas.lhd.discretize``) from the joint
  softmaxes and the output rows (what LHD pickles), whatever the method.

``lhd_parts(parts, config)`` does this for a method's ``Parts`` without changing the method: its
edge-weight map ``mix`` (softmax, a tempered softmax, a Gumbel or straight-through Gumbel sample,
a Dirichlet sample, ...) is applied to the *node view* of the alphas, (steps, (steps + 1) * n_ops),
one row per node holding its pairs and padded with a -1e9 logit (``jnas.lhd.node_view``), and to
the sum-path row beta_0 as one more distribution; the gates are always sigmoid(beta_1). So DARTS
gets LHD's ``inputSoftmax``, GDAS a hard Gumbel sample of one (input, op) pair per node and of
the sum path (LHD's ``path_sample``), SP-DARTS and small-temperature DARTS their tempered joint
softmax. Where a method's map returns edge-form weights (E, n_ops) regardless of its input (a
sampled one-hot architecture, random search with weight sharing), they are used as they are.

Differences from LHD's per-method code (jnas runs its own method on LHD's relaxation):
* DrNAS: LHD's ``concate_sum_five_dr.py`` draws the Dirichlet per edge and on both output rows;
  here the Dirichlet is one per node over its pairs and the sum row, and the gates stay sigmoids;
* PC-DARTS: LHD's has no edge-normalisation betas (the joint softmax already weighs a node's
  inputs); here the betas' edge factors are dropped on the LHD space for the same reason;
* GAEA: only ``mix='softmax'`` (LHD's port: the joint softmax of the exponentiated-gradient p);
  the output betas are then p too (a simplex per row under the EG step), read through the softmax
  and the sigmoid;
* penalties and metrics on the alphas (beta-DARTS, SP-DARTS's sparsity, entropies) see the
  per-edge alphas, as on the DARTS space.

Methods whose search changes the cell itself (P-DARTS's and DrNAS's progressive op pruning,
StacNAS's op groups, DARTS-PT's projection, CNAS, random search's ranking) are tied to the DARTS
cell: building them with ``space='lhd'`` raises a ``ValueError`` naming the method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnas import lhd
from jnas.search import base

__all__ = ["lhd_parts", "check_space", "DARTS_CELL_ONLY"]

# methods whose search or selection edits the DARTS cell (see the module docstring)
DARTS_CELL_ONLY = {
    "pdarts": "P-DARTS prunes ops per DARTS edge between stages",
    "stacnas": "StacNAS searches DARTS op groups and their members",
    "darts-pt": "DARTS-PT projects DARTS edges (top-2 inputs per node)",
    "cnas": "CNAS is its own op set and 6-node DARTS cell",
    "rsws": "random search with weight sharing ranks DARTS-cell samples",
    "gdas-frc": "GDAS-FRC's fixed reduction cell is a DARTS cell",
    "manas": "MANAS's agents choose one op per DARTS edge",
    "manas-ls": "MANAS's agents choose one op per DARTS edge",
    "enas": "ENAS searches its own micro space (jnas.cellspace 'enas')",
    "nao": "NAO-WS searches the ENAS-like 5-op space (jnas.cellspace 'nao')",
    "nsganet": "NSGA-Net searches its own micro space (jnas.cellspace 'nsganet')",
}


def check_space(name: str, config) -> None:
  """Raises ``ValueError`` if method ``name`` cannot run on ``config.space``."""
  if getattr(config, "space", "darts") != "lhd":
    return
  if name in DARTS_CELL_ONLY:
    raise ValueError(f"method {name!r} does not run on the LHD space: {DARTS_CELL_ONLY[name]}. "
                     f"Methods tied to the DARTS cell: {', '.join(sorted(DARTS_CELL_ONLY))}")
  if name.startswith("gaea") and getattr(config, "mix", "") == "simplex":
    raise ValueError(f"method {name!r} with mix='simplex' mixes with its per-edge simplex p itself, which is not a "
                     "distribution over a node's (input, op) pairs; on the LHD space use mix='softmax' (LHD's port)")
  if getattr(config, "progressive", False):
    raise ValueError(f"method {name!r} with progressive=True prunes DARTS edges; use progressive=False on the LHD space")


def _cell_types(arch):
  return tuple(t for t in ("normal", "reduce") if t in arch)


def lhd_parts(parts: base.Parts, config: base.SearchConfig) -> base.Parts:
  """``parts`` on the LHD cell (see the module docstring)."""
  steps, n_ops = config.steps, len(config.primitives)
  E = lhd.node_rows(steps)[-1][1]
  view_shape = (steps, (steps + 1) * n_ops)

  def init_arch(key):
    k_arch, k_out = jax.random.split(key)
    arch = dict(parts.init_arch(k_arch))
    for i, t in enumerate(_cell_types(arch)):
      if tuple(arch[t].shape) != (E, n_ops):
        raise ValueError(f"the method's architecture {t!r} has shape {tuple(arch[t].shape)}; the LHD space needs "
                         f"({E}, {n_ops})")
      arch[f"{t}_output"] = 1e-3 * jax.random.normal(jax.random.fold_in(k_out, i), (2, steps))
    return arch

  def inner(arch):
    return {k: v for k, v in arch.items() if not k.endswith("_output")}

  def node_arch(arch):
    return {**inner(arch), **{t: lhd.node_view(arch[t], steps) for t in _cell_types(arch)}}

  def assemble(arch, w_nodes, w_sum=None):
    """The supernet's LHD weights from the method's node-view weights (and sum-row weights)."""
    out = {}
    for t in _cell_types(arch):
      wt = w_nodes[t]
      if tuple(wt.shape) == view_shape:
        out[t] = lhd.from_node_view(wt, steps, n_ops)
      elif tuple(wt.shape) == (E, n_ops):  # edge-form weights (a sampled architecture)
        out[t] = wt
      else:
        raise ValueError(f"the method's edge weights {t!r} have shape {tuple(wt.shape)}, which fits neither the "
                         f"LHD node view {view_shape} nor its edges ({E}, {n_ops})")
      beta = arch[f"{t}_output"]
      a = w_sum[t][0] if (w_sum is not None and tuple(w_sum[t].shape) == (1, steps)) else jax.nn.softmax(beta[0])
      out[f"{t}_output"] = jnp.stack([a, jax.nn.sigmoid(beta[1])])
    return out

  def sum_arch(arch):
    return {**inner(arch), **{t: arch[f"{t}_output"][:1] for t in _cell_types(arch)}}

  def mix(arch, key, step):
    k_sum = None if key is None else jax.random.fold_in(key, 7919)
    return assemble(arch, parts.mix(node_arch(arch), key, step), parts.mix(sum_arch(arch), k_sum, step))

  def eval_mix(arch):
    return assemble(arch, parts.eval_mix(node_arch(arch)), parts.eval_mix(sum_arch(arch)))

  def weight_mix(arch, key, step, attack_loss):
    """The method's perturbed node-view weights (SDARTS), at the deterministic output rows."""
    w_sum = parts.eval_mix(sum_arch(arch))
    attack = lambda w_nodes: attack_loss(assemble(arch, w_nodes, w_sum))
    return assemble(arch, parts.weight_mix(node_arch(arch), key, step, attack), w_sum)

  def derive(arch, data=None):
    del data
    return lhd.discretize(jax.device_get(lhd.search_weights(arch, steps)), config.lhd_policy, config.primitives,
                          steps=steps)

  def post_step(arch, key, step):
    return {**arch, **parts.post_step(inner(arch), key, step)}

  return parts._replace(init_arch=init_arch, mix=mix, eval_mix=eval_mix, derive=derive,
                        weight_mix=weight_mix if parts.weight_mix is not None else None,
                        post_step=post_step if parts.post_step is not None else None)
