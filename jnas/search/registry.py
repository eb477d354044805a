"""The registry of search methods: name -> ``MethodSpec`` (a builder with its config and presets).

  spec = jnas.search.METHODS['pcdarts']
  config = spec.config(epochs=10)                     # the authors' defaults, then overrides
  search = spec(config, steps_per_epoch=195)           # a jnas.search.base.Search (its stages)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

__all__ = ["MethodSpec", "CPU_PRESET", "config_for"]

# The CPU preset every method starts from (a demonstration on 2 cores, not a search that means
# much); a method's ``cpu`` entries override it.
CPU_PRESET = {"epochs": 3, "layers": 3, "C": 8, "batch_size": 32}


class MethodSpec(NamedTuple):
  """name; config: its config dataclass (defaults = the authors' code); build(config,
  steps_per_epoch) -> Search; paper and changes: one line each for ``--list-methods``; cpu:
  overrides of the CPU preset; data: preset data settings (subset etc.)."""

  name: str
  config: type
  build: Callable[[Any, int], Any]
  paper: str
  changes: str
  cpu: dict = {}

  def __hash__(self):  # (cpu is a dict) by name: programs are cached per method
    return hash((self.name, self.config))

  def __call__(self, config=None, steps_per_epoch: int = 1):
    config = self.config() if config is None else config
    if not isinstance(config, self.config):
      raise ValueError(f"method {self.name!r} takes a {self.config.__name__}, got {type(config).__name__}")
    from jnas.search import spaces
    spaces.check_space(self.name, config)
    return self.build(config, steps_per_epoch)

  def preset(self, name: str) -> dict:
    """The preset's overrides of the config's defaults ('paper': none)."""
    if name == "paper":
      return {}
    if name == "cpu":
      fields = {f.name for f in dataclasses.fields(self.config)}
      return {k: v for k, v in {**CPU_PRESET, **self.cpu}.items() if k in fields}
    raise ValueError(f"unknown preset {name!r}; use 'paper' or 'cpu'")


def config_for(spec: MethodSpec, preset: str = "paper", **overrides):
  """``spec.config`` with the preset, then ``overrides`` (unknown names are a ValueError)."""
  fields = {f.name for f in dataclasses.fields(spec.config)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"method {spec.name!r} has no setting(s) {unknown}; known: {', '.join(sorted(fields))}")
  return spec.config(**{**spec.preset(preset), **overrides})
