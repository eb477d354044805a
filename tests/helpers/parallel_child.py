"""Run by tests/test_parallel.py in a subprocess with 2 fake CPU devices: one tiny search and one
tiny retraining on 1 device, 2 devices by seeds and 2 devices by data; prints the results as JSON."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np


from jnas import parallel
from jnas.genotype import Genotype
from jnas.search import METHODS, run
from jnas.train import get_protocol, train_genotypes

assert jax.device_count() == 2, jax.devices()
# most XLA optimisations off, as the in-process tests' ``fast_compile`` (every run compared here is
# compiled the same way)
jax.config.update("jax_disable_most_optimizations", True)
from tiny_search import CFG, data  # noqa: E402 (beside this script)

ds, w, a = data()
out = {}
# whole searches: 1 device and 2 by seeds (data parallelism is compared step by step below)
for name, kw in (("one", dict(devices=1)), ("seeds", dict(devices=2))):
  res = run.run_search("darts", CFG, [0, 1], w, a, quiet=True, mean=ds.mean, std=ds.std, eval_images=16, **kw)
  out[f"search_{name}"] = {"genotypes": {s: str(g) for s, g in res["genotypes"].items()},
                           "arch": {s: np.asarray(res["arch"][s]["normal"]).tolist() for s in res["arch"]},
                           "val_loss": [r["val_loss"] for r in res["history"]]}

# one step from the same state on 1 device, 2 by seeds, 2 by data; the seed-sharded state really
# is split over the devices
def one_step(layout):
  progs = run._programs(METHODS["darts"], CFG, 4, 0, "null", tuple(ds.mean), tuple(ds.std), "vmap", (8, 8, 3), layout)
  lay = layout or parallel.Layout(1)
  place = lay.place_seeded if lay.mode == "seeds" else lay.place_replicated
  state = place(progs.init(jnp.stack([jax.random.key(0), jax.random.key(1)])))
  sums = place(jax.tree.map(lambda z: jnp.broadcast_to(z, (2,)), progs.sums))
  data = lay.place_replicated(tuple(jnp.asarray(x) for x in (w.images, w.labels, a.images, a.labels)))
  pw, pa = progs.perms(state.key, 0, 32, 32)
  new, new_sums = progs.step(state, sums, *data, pw, pa, jnp.int32(0))
  return new, new_sums


for name, layout in (("one", None), ("seeds", parallel.Layout(2, "seeds")), ("data", parallel.Layout(2, "data"))):
  new, sums = one_step(layout)
  out[f"step_{name}"] = {"arch": np.asarray(new.arch["normal"]).tolist(), "val_loss": np.asarray(sums["val_loss"]).tolist(),
                         "w": np.asarray(jax.tree.leaves(new.params)[-1]).ravel()[:50].tolist()}
  if name == "seeds":
    leaf = jax.tree.leaves(new.params)[0]
    out["sharding"] = {"spec": list(leaf.sharding.spec), "shape": list(leaf.shape),
                       "shards": [list(s.data.shape) for s in leaf.addressable_shards],
                       "devices": sorted(str(s.device) for s in leaf.addressable_shards)}

# a one-node cell pair (a smaller program than a published 4-node cell; the comparison is the same)
CELL = Genotype.parse("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=range(2, 3), "
                      "reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=range(2, 3))")
proto = get_protocol("base", preset="cpu", epochs=1, C=4, layers=3, batch_size=16, train_images=64, test_images=32)
for name, kw in (("one", dict(devices=1)), ("seeds", dict(devices=2))):
  recs = train_genotypes([CELL], [0, 1], proto, ds.train, ds.test, num_classes=10, quiet=True, **kw)
  out[f"train_{name}"] = [[r["train_loss"][-1], r["final_acc"], r["test_acc"][-1]] for r in recs]
# a pack (the same genotype twice, so both entries must equal the one-device run) with its seeds split
recs = train_genotypes([CELL] * 2, [0, 1], proto, ds.train, ds.test, num_classes=10, quiet=True,
                       devices=2, pack_size=2)
out["train_packed_seeds"] = [[r["train_loss"][-1], r["final_acc"], r["test_acc"][-1]] for r in recs]
json.dump(out, sys.stdout)
