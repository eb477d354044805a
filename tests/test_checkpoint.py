"""Tests for jnas.checkpoint: atomic result files, JSON lines, orbax round trips of whole states."""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas import checkpoint as ck


def _no_temp_files(directory):
  return [f for f in os.listdir(directory) if f.endswith(".tmp")] == []


# --- atomic files -----------------------------------------------------------------------------

def test_atomic_write_json(tmp_path):
  path = tmp_path / "sub" / "results.json"  # parent directories are created
  obj = {"b": np.float32(0.5), "a": [np.int64(3), jnp.arange(2)], "c": np.array([[1, 2]]),
         "d": jnp.float32(1.5), "e": np.bool_(True), "s": "x"}
  ck.atomic_write_json(path, obj, sort_keys=True)
  text = path.read_text()
  assert json.loads(text) == {"a": [3, [0, 1]], "b": 0.5, "c": [[1, 2]], "d": 1.5, "e": True,
                              "s": "x"}
  assert text.startswith('{\n  "a"')  # indent 2, sorted
  ck.atomic_write_json(path, {"v": 2})  # overwrite
  assert json.loads(path.read_text()) == {"v": 2}
  assert _no_temp_files(path.parent)
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_atomic_write_failure_keeps_old_file(tmp_path):
  path = tmp_path / "results.json"
  ck.atomic_write_json(path, {"v": 1})
  with pytest.raises(TypeError, match="not JSON serializable"):
    ck.atomic_write_json(path, {"v": object()})
  assert json.loads(path.read_text()) == {"v": 1}
  assert _no_temp_files(tmp_path)


def test_atomic_write_text_and_npz(tmp_path):
  ck.atomic_write_text(tmp_path / "genotype.txt", "Genotype(normal=[])\n")
  assert (tmp_path / "genotype.txt").read_text() == "Genotype(normal=[])\n"
  curves = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
  ck.atomic_write_npz(tmp_path / "curves.npz", curves=curves, seeds=jnp.arange(3))
  with np.load(tmp_path / "curves.npz") as z:
    np.testing.assert_array_equal(z["curves"], curves)
    assert z["curves"].dtype == np.float32
    np.testing.assert_array_equal(z["seeds"], [0, 1, 2])
  assert _no_temp_files(tmp_path)


# --- JSON lines -------------------------------------------------------------------------------

def test_jsonl_append_and_read(tmp_path):
  path = tmp_path / "metrics.jsonl"
  for epoch in range(3):
    ck.append_jsonl(path, {"epoch": epoch, "seed": np.int32(0), "acc": np.float32(0.5)})
  assert path.read_text().count("\n") == 3
  assert ck.read_jsonl(path) == [{"epoch": e, "seed": 0, "acc": 0.5} for e in range(3)]


def test_jsonl_truncated_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  ck.append_jsonl(path, {"epoch": 0})
  ck.append_jsonl(path, {"epoch": 1})
  with open(path, "a") as f:  # a run killed in the middle of writing a record
    f.write('{"epoch": 2, "ac')
  assert ck.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
  # The resumed run appends: the broken line goes, the file holds complete records only.
  ck.append_jsonl(path, {"epoch": 2})
  assert ck.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]
  assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n'


def test_jsonl_complete_record_without_newline_is_kept(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 0}\n{"epoch": 1}')  # killed between the record and its newline
  assert ck.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
  ck.append_jsonl(path, {"epoch": 2})
  assert ck.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]


def test_jsonl_corrupt_middle_line_raises(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 0}\n{"ep\n{"epoch": 2}\n')
  with pytest.raises(ValueError, match="line 2"):
    ck.read_jsonl(path)


# --- orbax state ------------------------------------------------------------------------------

class State(NamedTuple):  # a search state in the shape of jnas.search.darts.DartsState
  params: dict
  w_opt: optax.OptState
  alphas: dict
  a_opt: optax.OptState
  step: jax.Array
  key: jax.Array
  seed_keys: jax.Array


def _state(seed=0):
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32)},
            "bn": {"mean": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16)}}
  alphas = {"normal": jnp.asarray(1e-3 * rng.normal(size=(14, 8)), jnp.float32),
            "reduce": jnp.asarray(1e-3 * rng.normal(size=(14, 8)), jnp.float32)}
  w_tx = optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(0.025, momentum=0.9))
  a_tx = optax.adam(3e-4, b1=0.5)
  w_opt, a_opt = w_tx.init(params), a_tx.init(alphas)
  # Take one step of each so that the optimizer states are not all zeros.
  g = jax.tree.map(jnp.ones_like, params)
  _, w_opt = w_tx.update(g, w_opt, params)
  _, a_opt = a_tx.update(jax.tree.map(jnp.ones_like, alphas), a_opt, alphas)
  return State(params, w_opt, alphas, a_opt, step=jnp.int32(7 + seed),
               key=jax.random.key(seed),
               seed_keys=jax.random.split(jax.random.key(seed + 100, impl="rbg"), 3))


def _assert_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)

  def check(a, b):
    assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
    if ck._is_key(b):
      assert jax.random.key_impl(a) == jax.random.key_impl(b)
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  jax.tree.map(check, got, want)


def test_save_restore_round_trip(tmp_path):
  state = _state()
  ck.save_state(tmp_path, 7, state)
  assert ck.latest_step(tmp_path) == 7
  _assert_equal(ck.restore_state(tmp_path, state), state)
  # A fresh state of the same structure as target, as when resuming.
  _assert_equal(ck.restore_state(tmp_path, _state(seed=1)), state)


def test_restore_into_eval_shape_target(tmp_path):
  state = _state()
  ck.save_state(tmp_path / "ckpt", 3, state)
  target = jax.eval_shape(_state)  # typed keys become abstract key<fry> / key<rbg> leaves
  restored = ck.restore_state(tmp_path / "ckpt", target)
  _assert_equal(restored, state)
  assert jax.random.key_impl(restored.seed_keys) == "rbg"
  # The restored key draws the same numbers as the saved one.
  np.testing.assert_array_equal(jax.random.normal(restored.key, (3,)),
                                jax.random.normal(state.key, (3,)))


def test_keys_stored_as_plain_arrays(tmp_path):
  # On disk a typed key is its key_data: restoring with a uint32 target gives the raw data.
  state = {"key": jax.random.key(5), "step": jnp.int32(1)}
  ck.save_state(tmp_path, 1, state)
  raw = ck.restore_state(tmp_path, {"key": jnp.zeros((2,), jnp.uint32), "step": jnp.int32(0)})
  np.testing.assert_array_equal(raw["key"], jax.random.key_data(state["key"]))


def test_keep_and_latest_step(tmp_path):
  assert ck.latest_step(tmp_path / "missing") is None
  assert ck.latest_step(tmp_path) is None  # exists but empty
  states = {s: {"x": jnp.full((2,), s, jnp.float32), "step": jnp.int32(s)} for s in (1, 2, 3)}
  for s, st in states.items():
    ck.save_state(tmp_path, s, st, keep=2)
  assert ck.latest_step(tmp_path) == 3
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 3]  # 1 was deleted
  _assert_equal(ck.restore_state(tmp_path, states[1], step=2), states[2])
  with pytest.raises(FileNotFoundError, match="step 1"):
    ck.restore_state(tmp_path, states[1], step=1)
  with pytest.raises(ValueError, match="not saved"):
    ck.save_state(tmp_path, 2, states[2])  # not newer than the latest step
  with pytest.raises(FileNotFoundError):
    ck.restore_state(tmp_path / "missing", states[1])


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
  old = {"x": jnp.arange(3.0), "step": jnp.int32(1)}
  new = {"x": jnp.arange(3.0) + 1, "step": jnp.int32(2)}
  ck.save_state(tmp_path, 1, old)

  # Orbax finalises a step by renaming its temporary directory: fail there, as a crash would.
  def crash(*args, **kwargs):
    raise OSError("simulated crash")

  with monkeypatch.context() as m:
    m.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
      ck.save_state(tmp_path, 2, new)
  assert any("tmp" in d for d in os.listdir(tmp_path))  # the partial save is on disk
  assert ck.latest_step(tmp_path) == 1  # but ignored
  _assert_equal(ck.restore_state(tmp_path, new), old)
  # The resumed run saves step 2 again; orbax replaces the unfinished directory.
  ck.save_state(tmp_path, 2, new)
  assert ck.latest_step(tmp_path) == 2
  _assert_equal(ck.restore_state(tmp_path, old), new)
