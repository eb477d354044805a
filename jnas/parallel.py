"""Spreading a job over devices with JAX's own sharding: a 1-D mesh, and ``jit`` partitions the step.

Two layouts, both on a 1-D ``jax.sharding.Mesh`` of the first ``devices`` visible devices:

* ``'seeds'`` (default): the leading seed axis of every state array (and of the per-seed data
  permutations) is sharded over the mesh axis ``'seeds'``; the dataset is replicated. The vmapped
  step runs under ``shard_map``: each device runs the same vmapped program on its own seeds, and
  nothing is communicated. (Left to the SPMD partitioner, the vmapped seeds' 1x1 convolutions,
  grouped convolutions whose groups are the seeds, came out wrong when the seed axis was sharded:
  XLA:CPU, jax 0.10.2, 2 host devices; ``shard_map`` never partitions a convolution.) The seed
  count must divide by the device count (an uneven split is rejected, with the counts that work).
* ``'data'``: one large network; the batch axis inside the step is sharded over the mesh axis
  ``'data'`` (``with_sharding_constraint`` on the batch), the weights are replicated, and the
  compiler inserts the reductions (batch-norm statistics over the global batch, the gradient
  mean). The batch size must divide by the device count; the per-device batch is B / devices.

Results do not depend on the layout up to float summation order: seeds sharded over devices run
the same per-seed program as on one device, and data parallelism computes the same global-batch
mean in another order (equal to float tolerance, not bit for bit).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

try:
  from jax import shard_map
except ImportError:  # jax < 0.7
  from jax.experimental.shard_map import shard_map

__all__ = ["Layout", "MODES", "resolve", "visible_devices", "to_host", "is_primary"]

MODES = ("seeds", "data")


def visible_devices() -> int:
  """Number of devices JAX sees (all processes)."""
  return jax.device_count()


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a job's arrays live: ``devices`` devices in a 1-D mesh, sharding ``mode``'s axis.

  ``Layout(1)`` is one device; its arrays are placed on it exactly as an unsharded job's.
  """

  devices: int = 1
  mode: str = "seeds"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown parallel mode {self.mode!r}; use 'seeds' or 'data'")
    n = visible_devices()
    if not 1 <= self.devices <= n:
      raise ValueError(f"--devices {self.devices}: {n} device{'s' * (n != 1)} visible "
                       f"({jax.default_backend()}); use 1..{n}")

  @property
  def mesh(self) -> Mesh:
    return Mesh(np.asarray(jax.devices()[: self.devices]), (self.mode,))

  @property
  def sharded(self) -> bool:
    return self.devices > 1

  def check_seeds(self, n_seeds: int) -> None:
    if self.mode == "seeds" and n_seeds % self.devices:
      ok = [d for d in range(1, self.devices + 1) if n_seeds % d == 0]
      raise ValueError(f"{n_seeds} seeds do not split evenly over {self.devices} devices: use a seed count "
                       f"divisible by {self.devices}, or --devices {max(ok)}")

  def check_batch(self, batch_size: int) -> None:
    if self.mode == "data" and batch_size % self.devices:
      raise ValueError(f"--parallel data: batch size {batch_size} does not split over {self.devices} devices; "
                       f"use a multiple of {self.devices}")

  def seed_sharding(self) -> NamedSharding:
    """Leading (seed) axis over the mesh in 'seeds' mode; replicated in 'data' mode."""
    return NamedSharding(self.mesh, P("seeds") if self.mode == "seeds" else P())

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def batch_spec(self) -> NamedSharding | None:
    """The sharding of one seed's batch (B, ...) inside the step: 'data' shards B."""
    return NamedSharding(self.mesh, P("data")) if (self.mode == "data" and self.sharded) else None

  def per_device(self, fn, in_specs, out_specs):
    """``fn`` (a vmapped function) run on each device's share of the seeds (``shard_map``);
    ``in_specs`` / ``out_specs``: per argument / output, True for a seed-axis argument, False for
    a replicated one. Unchanged without sharding or in 'data' mode."""
    if not self.sharded or self.mode != "seeds":
      return fn
    spec = lambda seeded: P("seeds") if seeded else P()
    kw = dict(mesh=self.mesh, in_specs=tuple(spec(b) for b in in_specs),
              out_specs=tuple(spec(b) for b in out_specs) if isinstance(out_specs, tuple) else spec(out_specs))
    try:
      return shard_map(fn, **kw, check_vma=False)
    except TypeError:  # older jax: check_rep
      return shard_map(fn, **kw, check_rep=False)

  def place_seeded(self, tree):
    """Every array of ``tree`` with a leading seed axis, placed by ``seed_sharding`` (scalars
    replicated)."""
    if not self.sharded:
      return tree
    sh, rep = self.seed_sharding(), self.replicated()
    return jax.tree.map(lambda x: _put(x, sh if getattr(x, "ndim", 0) >= 1 else rep), tree)

  def place_replicated(self, tree):
    if not self.sharded:
      return tree
    rep = self.replicated()
    return jax.tree.map(lambda x: _put(x, rep), tree)

  def describe(self, batch_size: int | None = None) -> str:
    if not self.sharded:
      return f"1 device ({jax.devices()[0].device_kind})"
    text = f"{self.devices} devices ({jax.devices()[0].device_kind}), {self.mode} parallel"
    if self.mode == "data" and batch_size:
      text += f", {batch_size // self.devices} images per device of a {batch_size}-image batch"
    return text


def resolve(devices: int | None, mode: str = "seeds", *, seeds: int | None = None,
            batch_size: int | None = None) -> Layout:
  """The layout for ``devices`` devices (checked against what is visible, and against ``seeds`` /
  ``batch_size`` when given: an uneven split is a ``ValueError``). ``devices=None``: all visible
  devices, or the most of them that the seed count ('seeds') or the batch size ('data') divides
  by (one seed: one device)."""
  if devices is None:
    n = visible_devices()
    size = seeds if mode == "seeds" else batch_size
    devices = max(d for d in range(1, n + 1) if size % d == 0) if size else n
  layout = Layout(int(devices), mode)
  if seeds is not None:
    layout.check_seeds(seeds)
  if batch_size is not None:
    layout.check_batch(batch_size)
  return layout


def _put(x, sharding):
  """``x`` (the same value on every process) as a global array with ``sharding``; across processes
  each one builds its own shards (``jax.make_array_from_callback``)."""
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global (e.g. restored by orbax)
    return x if x.sharding.is_equivalent_to(sharding, x.ndim) else jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _put(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def is_primary() -> bool:
  """Process 0 of a multi-process job (or the only process): the one that writes run files."""
  return jax.process_index() == 0


def to_host(tree):
  """``tree`` as NumPy arrays on this host: arrays spread over several processes are gathered
  (``multihost_utils.process_allgather``, every process must call it); typed PRNG keys stay keys."""
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    is_key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    if x.is_fully_addressable:
      return x if is_key else np.asarray(x)
    from jax.experimental import multihost_utils
    if is_key:
      data = multihost_utils.process_allgather(jax.random.key_data(x), tiled=True)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)
