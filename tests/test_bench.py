"""bench/profile.py: the per-op breakdown that guides optimisation must read real traces."""

from bench import profile


def test_op_sources_reads_hlo_metadata():
  hlo = """
  %dot.7 = f32[128,384]{1,0} dot(%a, %b), lhs_contracting_dims={0}, metadata={op_name="jit(train_step)/while/body/checkpoint/BTD,DF->BTF/transpose" stack_frame_id=9}
  ROOT %copy_bitcast_fusion.3 = f32[4]{0} fusion(%c), kind=kLoop, calls=%f, metadata={op_name="jit(train_step)/jit(silu)/mul"}
  %param.1 = f32[4]{0} parameter(0)
"""
  sources = profile.op_sources(hlo)
  assert sources == {"dot.7": "jit(train_step)/while/body/checkpoint/BTD,DF->BTF/transpose",
                     "copy_bitcast_fusion.3": "jit(train_step)/jit(silu)/mul"}
  assert profile.short_source(sources["dot.7"]) == "checkpoint/BTD,DF->BTF/transpose"
  assert profile.short_source(sources["copy_bitcast_fusion.3"]) == "mul"


def test_profile_of_a_tiny_training_step():
  ops = profile.profile("tiny", 128, batch=2, steps=1)
  total = sum(r["ns_per_step"] for r in ops.values())
  assert total > 0
  # The step's matmuls are traced and traced back to the model's einsums.
  dots = [r for r in ops.values() if "dot_general" in r["source"]]
  assert dots and sum(r["ns_per_step"] for r in dots) > 0
  # Nearly every traced op is attributed to some jax operation (counted, not timed: on a loaded
  # machine one pre-empted op can hold any share of the time).
  unknown = [k for k, r in ops.items() if r["source"] == "?"]
  assert len(unknown) < 0.2 * len(ops)
  rows = profile.table({2: ops}, "kind", top=5)
  assert len(rows) == 5 and rows[0]["ms_batch2"] >= rows[-1]["ms_batch2"]
  assert abs(sum(r["share_batch2"] for r in profile.table({2: ops}, "kind", 10**6)) - 1) < 1e-6


def test_xla_flags_speedup_is_against_default_and_mfu_against_the_highest_peak(monkeypatch):
  from bench import xla_flags

  # Two rounds: each variant keeps its best step; a flag that slows the peak probe (its own
  # peak 100) must not lift its MFU, which divides by the highest peak any child saw (200).
  results = iter([
      [dict(name="demo", tokens_per_s=100.0, peak_flops=200.0, train_flops_per_token=1.0)],
      [dict(name="demo", tokens_per_s=90.0, peak_flops=100.0, train_flops_per_token=1.0)],
      [dict(name="demo", tokens_per_s=80.0, peak_flops=150.0, train_flops_per_token=1.0)],
      [dict(name="demo", tokens_per_s=150.0, peak_flops=100.0, train_flops_per_token=1.0)],
  ])
  monkeypatch.setattr(xla_flags, "run_child", lambda variant: next(results))
  out = xla_flags.compare(("default", "ynn eltwise"), rounds=2)
  rows = {r["variant"]: r for r in out["rows"]}
  assert out["peak_flops"] == 200.0
  assert rows["default"]["tokens_per_s"] == 100.0 and rows["default"]["speedup"] == 1.0
  assert rows["ynn eltwise"]["speedup"] == 1.5
  assert rows["ynn eltwise"]["mfu"] == 150.0 / 200.0
