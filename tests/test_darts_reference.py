"""DARTS on the method interface computes what jnas computed before it: the supernet loss, logits
and gradients (weights and alphas) at commit d43e144, when ``SearchNetwork.forward`` still took
alphas and applied the softmax itself.

``data/darts_d43e144.npz`` was written at that commit (C=4, 3 cells, 4 nodes, all 8 DARTS ops,
a batch of 4 8x8 images, ``jax_disable_most_optimizations``, jax 0.10.2). The values must agree to
float32 rounding: XLA:CPU's code (and so the order of float sums) depends on the jax version and on
the CPU it runs on (the same jax differs by about 2e-7 on gradients of 4e-2 across x86 hosts), so
bit equality is not a property of the code.
"""

import os

import jax
import numpy as np

import jnas
from jnas.search import METHODS

REF = os.path.join(os.path.dirname(__file__), "data", "darts_d43e144.npz")


def test_darts_loss_and_gradients_equal_the_pre_interface_code(fast_compile):
  ref = dict(np.load(REF))
  config = METHODS["darts"].config(C=4, layers=3, steps=4)
  method = METHODS["darts"](config, 2).stage(0, None).method
  net = method.net
  v = net.init_variables(jax.random.key(0))
  alphas = jnas.init_alphas(jax.random.key(1))
  batch = (ref["x"], ref["y"])

  def loss(params, arch):
    value, (_, logits) = method.loss(params, v["batch_stats"], arch, batch, None, 0)
    return value, logits

  (value, logits), (g_params, g_arch) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      v["params"], alphas)
  ours = {"loss": value, "logits": logits}
  for prefix, tree in (("grad_params", g_params), ("grad_alphas", g_arch)):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      ours[prefix + jax.tree_util.keystr(path)] = leaf
  assert set(ours) == set(ref) - {"x", "y", "jax_version"}
  same_jax = str(ref["jax_version"]) == jax.__version__
  for k, want in sorted(ref.items()):
    if k in ("x", "y", "jax_version"):
      continue
    got = np.asarray(ours[k])
    scale = float(np.max(np.abs(want))) if np.size(want) else 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-7, err_msg=f"{k} (jax "
                               f"{'same as' if same_jax else 'other than'} the reference's)")
