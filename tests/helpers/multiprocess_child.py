"""Run by tests/test_parallel.py: one process of a 2-process search on localhost (jax.distributed,
CPU collectives), or with process id -1 the same search in a single process.

  python multiprocess_child.py PORT PROCESS_ID OUT [STOP_AT|resume]
"""

import json
import sys

import jax

port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mode = sys.argv[4] if len(sys.argv) > 4 else ""
if pid >= 0:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                             initialization_timeout=120, heartbeat_timeout_seconds=600)

import numpy as np  # noqa: E402

import jnas.data as D  # noqa: E402
from jnas.loop import Interrupted  # noqa: E402
from jnas.search import METHODS, run  # noqa: E402

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
CFG = METHODS["darts"].config(order="first", conv_impl="xla", C=4, layers=3, steps=2, primitives=OPS, batch_size=8,
                              epochs=2, a_optimizer="sgd", a_lr=0.05)
ds = D.load_digits(size=8, channels=3)
w, a = D.search_split(ds.train, seed=0)
w, a = D.Split(w.images[:32], w.labels[:32]), D.Split(a.images[:32], a.labels[:32])
kw = dict(quiet=True, mean=ds.mean, std=ds.std, eval_images=16, out=out)
try:
  res = run.run_search("darts", CFG, [0, 1], w, a, resume=mode == "resume",
                       stop_at=int(mode) if mode.isdigit() else None, **kw)
except Interrupted as e:
  print(json.dumps({"interrupted": e.position, "devices": jax.device_count()}))
  sys.exit(0)
print(json.dumps({"genotypes": {s: str(g) for s, g in res["genotypes"].items()}, "devices": jax.device_count(),
                  "processes": jax.process_count(),
                  "arch": {s: np.asarray(res["arch"][s]["normal"]).tolist() for s in res["arch"]}}))
