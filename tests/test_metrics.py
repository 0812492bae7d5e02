"""One MFU: the training log's figure is infini_jax.peak.mfu (what bench/mfu.py reports too)."""

import types

import jax
import pytest

from configs import demo, models
from infini_jax import config as configlib
from infini_jax import metrics, trainer
from infini_jax import peak as peaklib


@pytest.mark.parametrize("kind,flops", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12)])
def test_published_peak_by_device_kind(kind, flops):
  assert peaklib.chip_peak(kind) == flops


@pytest.mark.parametrize("kind", ["TPU v7x", "TPU v4 lite", "NVIDIA B200", "cpu"])
def test_an_unknown_chip_is_an_error_that_says_how_to_give_its_peak(kind):
  # Not a measured fallback: a measured matmul rate would not compare with the published peaks.
  with pytest.raises(ValueError, match=f"no published bf16 peak for device_kind '{kind}'.*"
                     r"--config\.train\.peak_flops"):
    peaklib.chip_peak(kind)


def fake_accelerator(monkeypatch, kind: str, count: int):
  device = types.SimpleNamespace(platform="tpu", device_kind=kind)
  monkeypatch.setattr(jax, "devices", lambda *a: [device] * count)
  monkeypatch.setattr(jax, "device_count", lambda *a: count)


def test_accelerators_use_the_published_peak(monkeypatch):
  fake_accelerator(monkeypatch, "TPU v5 lite", 8)
  assert peaklib.job_peak() == 8 * 197e12  # the trainer's: the whole job
  assert peaklib.device_peak() == 197e12  # one device's


def test_cpu_peak_is_the_higher_of_two_probes(monkeypatch):
  monkeypatch.setattr(peaklib.PeakProbe, "__init__", lambda self: None)  # no compile here
  calls = iter([1e11, 3e11])
  monkeypatch.setattr(peaklib.PeakProbe, "__call__", lambda self: next(calls))
  # The trainer's: the higher of two probe calls (a Bracket around nothing), once per process.
  assert peaklib.job_peak() == 3e11 * jax.process_count()


def test_measured_cpu_peak_is_a_plausible_matmul_rate():
  peak = peaklib.measured_peak()
  assert 1e9 < peak < 1e13  # FLOP/s of XLA's float32 matmuls on a CPU


def test_the_log_is_library_mfu_for_the_same_step_time(monkeypatch):
  c = demo.get_config()
  model_cfg = configlib.validate(c, device_count=1)
  assert models.PRESETS["demo"].flops_per_token() == model_cfg.flops_per_token()
  flops_per_token, tokens = 3 * model_cfg.flops_per_token(), c.batch_size * c.seq_len
  peak, step_s = 2.8e11, 0.37
  clock = iter([100.0, 100.0 + 20 * step_s])  # Progress's start, then a report 20 steps later
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  logged = metrics.Progress(600, 0, tokens, flops_per_token, peak).report(20)
  assert logged["tokens_per_s"] == pytest.approx(tokens / step_s, rel=1e-12)
  assert logged["mfu"] == pytest.approx(peaklib.mfu(tokens / step_s, flops_per_token, peak),
                                        rel=1e-12)


def test_trainer_logs_mfu_against_the_library_peak(monkeypatch, tmp_path):
  # peak_flops 0: the trainer asks infini_jax.peak for the job's peak; what it logs is then
  # infini_jax.peak.mfu for the step time it logs.
  monkeypatch.setattr(peaklib, "measured_peak", lambda calls=2: 1.25e11)
  c = demo.get_config("runlocal")
  c.model.shape.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                       mlp_dim=64, segment_len=32)
  c.seq_len, c.batch_size = 64, 2
  c.data.update(subset="small", data_dir=str(tmp_path / "tfds"))
  c.optimizer.warmup_steps = 1
  c.train.update(steps=4, log_every=2, eval_every=0, checkpoint_every=4, peak_flops=0.0)
  out = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  flops_per_token = 3 * configlib.model_config(c).flops_per_token()
  assert out["mfu"] == pytest.approx(peaklib.mfu(out["tokens_per_s"], flops_per_token, 1.25e11),
                                     rel=1e-9)


def test_the_metric_writer_does_not_import_torch_and_leaves_it_importable(tmp_path):
  """tensorboardX imports PyTorch when it is installed (2-3 s at every start of train.py); the
test environment has it (requirements-test.txt, for the converter)."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  script = ("import sys; from infini_jax import metrics; assert 'torch' not in sys.modules; "
            f"w = metrics.MetricWriter({str(tmp_path)!r}); w.write(1, {{'loss': 2.0}}); "
            "w.close(); import torch; print(metrics.read(" + repr(str(tmp_path)) + ")[0]['loss'])")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.split()[-1] == "2.0", out.stderr[-2000:]
