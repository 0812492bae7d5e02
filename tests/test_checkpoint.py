"""The Checkpointer: saves in the background; resumes from the newest checkpoint that restores."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax.checkpoint import Checkpointer


def state_of(value: float) -> dict:
  return {"step": jnp.int32(value), "params": {"w": jnp.full((64, 64), value, jnp.float32),
                                               "b": jnp.arange(64, dtype=jnp.float32) + value}}


def abstract(state: dict):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_save_returns_before_the_write_and_the_state_may_change_right_after(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  state = {"w": jnp.arange(1_000_000, dtype=jnp.float32)}
  want = np.asarray(state["w"]).copy()
  overwrite = jax.jit(lambda s: {"w": s["w"] * 0 - 1}, donate_argnums=0)
  ckpt.save(1, state, {"position": 7})
  in_flight = ckpt.manager.is_saving_in_progress()
  state = overwrite(state)  # the training step donates the buffers the save was given
  jax.block_until_ready(state)
  assert ckpt.wait() == 1 and os.path.isdir(tmp_path / "checkpoints" / "1")
  restored, data = ckpt.restore(abstract({"w": want}))
  ckpt.close()
  assert in_flight  # the write went on in the background after save() returned
  np.testing.assert_array_equal(restored["w"], want)
  assert data == {"position": 7}


def save_two(tmp_path) -> Checkpointer:
  ckpt = Checkpointer(str(tmp_path), keep=3)
  for step in (2, 4):
    ckpt.save(step, state_of(step), {"position": step})
  ckpt.wait()
  return ckpt


def data_files(tmp_path, step):
  """The array files of a checkpoint (OCDBT data under state/)."""
  files = [f for f in glob.glob(str(tmp_path / "checkpoints" / str(step) / "state" / "**" / "d" /
                                    "*"), recursive=True) if os.path.isfile(f)]
  assert files
  return files


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, damage):
  ckpt = save_two(tmp_path)
  for f in data_files(tmp_path, 4):
    if damage == "truncate":
      os.truncate(f, os.path.getsize(f) // 2)
    else:
      os.remove(f)
  state, data, step = ckpt.restore_latest(abstract(state_of(0)))
  assert (step, data, int(state["step"])) == (2, {"position": 2}, 2)
  np.testing.assert_array_equal(state["params"]["w"], np.full((64, 64), 2.0))
  warning = capsys.readouterr().err.strip()
  print(warning)
  assert len(warning.splitlines()) == 1 and "the checkpoint of step 4" in warning, warning
  assert "resumed from step 2" in warning and str(tmp_path / "checkpoints") in warning
  # Set aside, so that training can write step 4 again (and is not sent back to it).
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4.unreadable"]
  ckpt.save(4, state_of(4), {"position": 4})
  ckpt.close()
  assert Checkpointer(str(tmp_path), keep=3).restore_latest(abstract(state_of(0)))[2] == 4


def test_where_none_restores_one_line_names_them_all(tmp_path):
  ckpt = save_two(tmp_path)
  os.remove(tmp_path / "checkpoints" / "2" / "data" / "metadata")  # the iterator's state
  for f in data_files(tmp_path, 4):
    os.truncate(f, 10)
  with pytest.raises(RuntimeError) as e:
    ckpt.restore_latest(abstract(state_of(0)))
  print(e.value)
  message = str(e.value)
  assert len(message.splitlines()) == 1
  assert "no checkpoint in" in message and "step 4:" in message and "step 2:" in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # nothing moved
