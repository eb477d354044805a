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
                             initialization_timeout=120, heartbeat_timeout_seconds=600,
                             shutdown_timeout_seconds=600)

import numpy as np  # noqa: E402


from jnas.loop import Interrupted  # noqa: E402
from jnas.search import run  # noqa: E402

from tiny_search import CFG, data  # noqa: E402 (beside this script)

ds, w, a = data()
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
