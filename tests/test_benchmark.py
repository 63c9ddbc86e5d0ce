"""Smoke tests of the benchmark suite's plumbing at tiny sizes (no timed assertions)."""

import argparse
import json

import jax
import jax.numpy as jnp
import pytest

from munet_jax.benchmark import common, models, report
from munet_jax.benchmark import parts as benchmark_parts
from munet_jax.benchmark.inference import jit_step, step_program
from munet_jax.benchmark.__main__ import main


def test_flops_of_a_matmul_is_2mnk():
    m, n, k = 32, 48, 64
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert common.flops_of(compiled) == 2 * m * n * k


class _Fake:
    def __init__(self, analysis):
        self.analysis = analysis

    def cost_analysis(self):
        return self.analysis


def test_flops_of_accepts_dict_and_list_of_dicts():
    assert common.flops_of(_Fake({"flops": 10.0})) == 10.0
    assert common.flops_of(_Fake([{"flops": 10.0}, {"flops": 5.0}])) == 15.0
    assert common.flops_of(_Fake(None)) is None
    assert common.flops_of(_Fake({"bytes accessed": 3.0})) is None


def test_measure_counts_no_recompilation_and_carries_state():
    f = jax.jit(lambda x, y: (x + y, y), donate_argnums=(0,))
    timing = common.measure(f, (jnp.zeros(4), jnp.ones(4)), repeats=2, carry=lambda a, r: (r[0], a[1]))
    assert timing.recompiled is False
    assert timing.flops is None or timing.flops > 0
    d = timing.to_dict()
    for field in ("median_ms", "min_ms", "compile_s", "recompiled_after_warmup", "memory", "achieved_gflops_per_s"):
        assert field in d


def test_peak_table_and_result_name():
    info = common.device_info()
    assert common.result_stem(info).endswith(info["date"])
    assert common.peak_gflops("float32", 123.0) == (123.0, "--peak_gflops")
    for field in ("jax", "jaxlib", "flax", "numpy"):
        assert field in info["versions"]


def test_inference_and_parts_write_the_report(tmp_path):
    argv = ["--tiny", "--size", "32x48", "--objects", "2", "--memory", "1,3", "--parts_memory", "2",
            "--dtype", "float32", "--repeats", "1", "--out", str(tmp_path)]
    main(["inference", *argv])
    main(["parts", *argv])  # merges into the same day's file
    (json_path,) = tmp_path.glob("*.json")
    (md_path,) = tmp_path.glob("*.md")
    data = json.loads(json_path.read_text())
    assert data["device"]["platform"] == jax.default_backend()
    assert set(data["versions"]) >= {"jax", "jaxlib", "flax", "numpy"}
    rows = data["inference"]
    assert [(r["objects"], r["memory_frames"]) for r in rows] == [(2, 1), (2, 3)]
    for r in rows:
        assert r["bucket"][0] % 16 == 0 and r["bucket"][1] % 16 == 0
        assert r["median_ms"] > 0 and r["fps"] > 0 and r["compile_s"] >= 0
        assert r["recompiled_after_warmup"] is False
        assert r["gflops"] > 0 and r["peak_gflops_per_s"] > 0
    parts = {r["part"]: r for r in data["parts"]}
    assert {"enc_q", "enc_r", "mu_layer", "cost_volume", "msam", "memory_read", "decoder",
            "frame_total(sum)"} <= set(parts)
    total = parts["frame_total(sum)"]
    assert 0 < total["mu_layer_plus_msam_share"] < 1
    # In the step: the step against the step without MU-Layer and MSAM (timed interleaved).
    assert total["step_ms"] > 0 and total["step_without_mu_msam_ms"] > 0
    assert total["mu_layer_plus_msam_step_share"] == pytest.approx(
        (total["step_ms"] - total["step_without_mu_msam_ms"]) / total["step_ms"])
    text = md_path.read_text()
    assert "## Inference" in text and "## Parts" in text and "of the step**" in text


def test_step_without_motion_is_the_step_less_exactly_the_mu_layer_and_msam():
    # The parts' in-step A/B times `models.without_motion(model)` against the model: its step
    # must be the same program less the MU-Layer and MSAM and nothing else, so the difference of
    # the two steps' model FLOPs is the two parts' own FLOPs (each lowered alone).
    args = argparse.Namespace(tiny=True, dtype="float32", conv3x3="direct", prepared="no", memory_read="dense",
                              size="32x48")
    (model, variables), = models.inference_variants(args, models.variables(True)).values()
    bucket = (32, 48)
    frame = jnp.zeros((*bucket, 3), jnp.uint8)
    flops = []
    for m in (model, models.without_motion(model)):
        program = step_program(jit_step(m), m, variables, 2, 3, bucket, bucket, frame)
        flops.append(common.model_flops(program.jitted, program.args))
    programs = benchmark_parts._programs(model, variables, 2, 3, bucket)
    motion = sum(common.model_flops(*programs[name]) for name in ("mu_layer", "msam"))
    assert motion > 0 and flops[0] - flops[1] == pytest.approx(motion, rel=1e-6)


def test_report_markdown_of_every_section(tmp_path):
    info = common.device_info()
    timing = {"median_ms": 10.0, "min_ms": 9.0, "compile_s": 1.0, "gflops": 2.0, "flops": 2e9,
              "achieved_gflops_per_s": 200.0, "mfu": 0.5, "memory": {"peak_estimate": 2**20},
              "device_peak_bytes": None, "recompiled_after_warmup": False}
    sections = {
        "training": [{"config": "tiny", "clip": [6, 8, 8], "objects": 3, "dtype": "float32", "per_device_batch": 1,
                      "global_batch": 8, "batch_searched_by_doubling": False, "clips_per_s": 800.0, **timing}],
        "pipeline": [{"source": "s", "clip": [6, 400, 400], "batch": 2, "clips_per_s": 1.0, "ms_per_batch": 2.0,
                      "cpu_cores": 2}],
    }
    json_path, md_path = report.write(tmp_path, info, sections, {"repeats": 1})
    data = json.loads(json_path.read_text())
    assert data["training"][0]["clips_per_s"] == 800.0
    text = md_path.read_text()
    assert "## Training step" in text and "## Input pipeline" in text and "50.00%" in text


@pytest.mark.slow
def test_training_step_report(tmp_path, monkeypatch):
    # The batch search the GPU runs (--fit_batch on CPU). Its compiles are replaced by an affine
    # memory model (each real compile of the tiny step takes ~30 s here; the search itself is
    # tested above): 1 GB + 1 GB per clip under a 3.5 GB budget -> 2 clips per device.
    from munet_jax.benchmark import training

    asked = []

    def fake_bytes(tiny, dtype, batch_size, crop, conv3x3=None, memory_read=None):
        asked.append(batch_size)
        return 1e9 * (1 + batch_size)

    monkeypatch.setattr(training, "compiled_step_bytes", fake_bytes)
    main(["training", "--tiny", "--train_size", "32x32", "--fit_batch", "--memory_budget_gb", "3.5",
          "--dtype", "float32", "--repeats", "1", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    (row,) = json.loads(json_path.read_text())["training"]
    assert row["per_device_batch"] == 2 and sorted(set(asked)) == [1, 2, 3]
    assert row["global_batch"] == 2 * jax.device_count()
    assert row["batch_fit"]["compiled_gb"] == {"1": 2.0, "2": 3.0, "3": 4.0}
    assert row["batch_fit"]["budget_gb"] == 3.5 and row["batch_fit"]["per_clip_gb"] == 1.0
    # The timed program is the real step at that batch: its own memory analysis is recorded.
    assert row["memory"]["peak_estimate"] > 0
    assert row["batch_fit"]["timed_program_gb"] == pytest.approx(row["memory"]["peak_estimate"] / 1e9)
    assert row["clips_per_s"] > 0 and row["recompiled_after_warmup"] is False
    (md_path,) = tmp_path.glob("*.md")
    assert "largest under 3.5 GB (XLA memory analysis)" in md_path.read_text()


def test_model_flops_count_direct_convs_while_the_timed_program_may_differ(tmp_path):
    # Conv algorithms with prepared kernels: the same model FLOPs (from the direct-conv program), rows kept
    # apart; 'direct' has nothing to prepare, so its row says so.
    main(["inference", "--tiny", "--size", "32x48", "--objects", "1", "--memory", "1", "--dtype", "float32",
          "--conv3x3", "direct,winograd", "--prepared", "yes", "--repeats", "1", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    rows = {(r["conv3x3"], r["prepared_kernels"]): r for r in json.loads(json_path.read_text())["inference"]}
    assert set(rows) == {("direct", False), ("winograd", True)}
    assert len({r["flops"] for r in rows.values()}) == 1
    direct, fast = rows["direct", False], rows["winograd", True]
    # Lowered (before XLA's passes) vs compiled cost analysis of the same direct program: within 1%.
    assert abs(direct["xla_flops"] / direct["flops"] - 1) < 0.01
    assert abs(fast["xla_flops"] / fast["flops"] - 1) > 0.01
    (md_path,) = tmp_path.glob("*.md")
    assert "| winograd, prepared |" in md_path.read_text()


def test_memory_read_variants_share_the_dense_model_flops(tmp_path):
    # The blocked read is a loop over memory frames, whose body XLA's cost analysis counts once:
    # the model FLOPs come from the dense read for both rows, and the blocked program's own
    # count falls short of them by the loop's missing iterations.
    # 448x448: 28x28 = 784 memory positions a frame, 2.3 MiB of logits: one frame per 4 MiB block.
    main(["inference", "--tiny", "--size", "448x448", "--objects", "1", "--memory", "4", "--dtype", "float32",
          "--conv3x3", "direct", "--memory_read", "dense,blocked", "--repeats", "1", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    rows = {r["memory_read"]: r for r in json.loads(json_path.read_text())["inference"]}
    assert set(rows) == {"dense", "blocked"}
    assert rows["dense"]["flops"] == rows["blocked"]["flops"]
    assert abs(rows["dense"]["xla_flops"] / rows["dense"]["flops"] - 1) < 0.01
    # The read's two GEMMs: 2 x (16 key + 32 value channels) x 4 frames x 784 x 784 positions;
    # 3 of the 4 blocks are not counted in the blocked program (nor their softmax's elementwise ops).
    uncounted_gemms = 3 / 4 * 2 * (16 + 32) * 4 * 784 * 784
    assert uncounted_gemms < rows["dense"]["xla_flops"] - rows["blocked"]["xla_flops"] < 1.2 * uncounted_gemms
    assert rows["blocked"]["timed_with"] == ["float32/direct/read dense", "float32/direct/read blocked"]
    (md_path,) = tmp_path.glob("*.md")
    assert "| direct | blocked |" in md_path.read_text()
    assert rows["dense"]["memory_read_ran"] == "dense" and rows["blocked"]["memory_read_ran"] == "blocked"


def test_cpu_peak_is_measured():
    if jax.default_backend() != "cpu":
        pytest.skip("CPU only")
    peak, source = common.peak_gflops("float32")
    assert peak > 0 and "measured" in source and "float32" in source
    # bfloat16's own GEMM ceiling (AMX / AVX512-BF16 or emulated): measured on a bfloat16 matmul.
    bf16_peak, bf16_source = common.peak_gflops("bfloat16")
    assert bf16_peak > 0 and "bfloat16" in bf16_source and bf16_peak != peak


def test_stm_baseline_is_merged_and_compared(tmp_path):
    stm = tmp_path / "stm.json"
    stm.write_text(json.dumps({"info": {"torch": "2.x", "threads": 2, "date": "2026-11-30"}, "rows": [
        {"size": [480, 864], "objects": 1, "memory_frames": 5, "dtype": "float32", "median_ms": 3000.0,
         "min_ms": 2900.0, "repeats": 3}]}))
    info = common.device_info()
    ours = {"config": "full", "image": [480, 854], "bucket": [480, 864], "objects": 1, "memory_frames": 5,
            "dtype": "float32", "decoder_conv": "auto", "median_ms": 2000.0, "min_ms": 1900.0, "fps": 0.5,
            "compile_s": 1.0, "gflops": 377.0, "achieved_gflops_per_s": 188.0, "mfu": 0.9, "memory": None,
            "device_peak_bytes": None, "recompiled_after_warmup": False, "peak_gflops_per_s": 200.0,
            "peak_source": "measured"}
    stm_rows = report.read_stm_results(stm)
    # As the command line does: the rows timed with --stm_results are marked as compared with it.
    ours_bf16 = {**ours, "dtype": "bfloat16", "median_ms": 1200.0}
    tagged = report.tag_compared_rows([ours, ours_bf16], stm_rows)
    _, md_path = report.write(tmp_path / "out", info, {"inference": tagged, "stm_baseline": stm_rows},
                              {"stm_results": str(stm)})
    text = md_path.read_text()
    assert "## Against STM" in text and "| float32 | auto (decoder only) | dense | 2000.0 | 1.50x |" in text
    assert "| bfloat16 | auto (decoder only) | dense | 1200.0 | 2.50x |" in text  # STM's float32 against our bfloat16
    assert "| auto (decoder only) |" in text  # a row from before model.conv3x3
    # A later row of other code is not set against that STM run.
    later = {**ours, "conv3x3": "direct", "median_ms": 1000.0}
    _, md_path = report.write(tmp_path / "out", info, {"inference": [later]}, {})
    text = md_path.read_text()
    assert "| 1.50x |" in text and "| 3.00x |" not in text and "| 1000.0 (1900.0) |" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="bad.json"):
        report.read_stm_results(bad)


def test_measure_many_interleaves_and_carries_each_state():
    calls = []

    def make(name):
        @jax.jit
        def f(x):
            return x + 1
        def traced(x):
            calls.append(name)
            return f(x)
        traced.lower, traced._cache_size = f.lower, f._cache_size
        return traced

    a, b = make("a"), make("b")
    timings = common.measure_many([common.Program(a, (jnp.zeros(2),), carry=lambda args, r: (r,)),
                                   common.Program(b, (jnp.zeros(2),))], repeats=3)
    assert [t.repeats for t in timings] == [3, 3]
    assert calls[-6:] == ["a", "b"] * 3  # the timed calls alternate
    assert all(t.recompiled is False and t.median_ms > 0 for t in timings)


def test_largest_batch_under_finds_the_boundary_with_few_compiles():
    from munet_jax.benchmark.training import largest_batch_under

    def counted(bytes_of):
        calls = []

        def bytes_at(b):
            calls.append(b)
            return bytes_of(b)
        return bytes_at, calls

    # Affine (the usual case): 1, 2, the guess and guess + 1.
    bytes_at, calls = counted(lambda b: 10.0 + 3.0 * b)
    assert largest_batch_under(bytes_at, 50.0, 256)[0] == 13  # 10 + 3 * 13 = 49 <= 50 < 52
    assert len(calls) == 4 and len(set(calls)) == 4
    # Not affine (activations grow faster than the guess from 1 and 2 says): bisection, same
    # answer as trying every batch.
    def curved(b):
        return 10.0 + 3.0 * b + 0.2 * b * b
    for budget in (12.0, 13.0, 16.4, 50.0, 400.0, 1e9):
        expected = max([b for b in range(1, 65) if curved(b) <= budget], default=0)
        bytes_at, calls = counted(curved)
        found, seen = largest_batch_under(bytes_at, budget, 64)
        assert found == expected, budget
        assert set(seen) == set(calls) and len(calls) <= 9
    # Out-of-memory while compiling reads as infinity: does not fit.
    found, _ = largest_batch_under(lambda b: float("inf") if b > 5 else float(b), 100.0, 64)
    assert found == 5


@pytest.mark.slow
def test_video_benchmark_times_the_whole_video_program(tmp_path):
    main(["video", "--tiny", "--size", "32x48", "--objects", "1,2", "--video_frames", "4", "--dtype", "float32",
          "--repeats", "1", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    rows = json.loads(json_path.read_text())["video"]
    assert [r["objects"] for r in rows] == [1, 2]
    for r in rows:
        assert r["frames"] == 4 and r["bucket"][0] % 16 == 0
        assert r["fps"] == pytest.approx(4 / (r["median_ms"] / 1e3))
        assert r["ms_per_frame"] == pytest.approx(r["median_ms"] / 4)
        assert r["recompiled_after_warmup"] is False
    # Model FLOPs of init + 3 steps: more objects, more work.
    assert 0 < rows[0]["flops"] < rows[1]["flops"]
    (md_path,) = tmp_path.glob("*.md")
    assert "## Inference: a whole video as one program" in md_path.read_text()


def test_rows_from_before_memory_read_count_as_dense_when_merged():
    old = [{"config": "full", "objects": 1, "memory_frames": 20, "median_ms": 1.0},  # before the setting: dense
           {"config": "full", "objects": 1, "memory_frames": 5, "median_ms": 2.0}]
    new = [{"config": "full", "objects": 1, "memory_frames": 20, "memory_read": "dense", "median_ms": 3.0},
           {"config": "full", "objects": 1, "memory_frames": 20, "memory_read": "auto", "median_ms": 4.0}]
    merged = report.merge_rows(old, new)
    assert [r["median_ms"] for r in merged] == [2.0, 3.0, 4.0]
    assert common.read_label({"memory_read": "auto", "memory_read_ran": "blocked"}) == "auto (blocked)"
    assert common.read_label({"memory_read": "dense", "memory_read_ran": "dense"}) == "dense"
    if jax.default_backend() == "cpu":  # what 'auto' runs there, by dtype and bank size
        assert models.read_ran(False, "auto", 20, (480, 864), "bfloat16") == "query_blocked + filled slots"
        assert models.read_ran(False, "auto", 5, (480, 864), "bfloat16") == "query_blocked"
        assert models.read_ran(False, "auto", 20, (480, 864), "float32") == "dense + filled slots"
        assert models.read_ran(True, "auto", 5, (480, 864), "float32") == "blocked"
        assert models.read_ran(False, "dense", 20, (480, 864), "bfloat16") == "dense"
    assert common.read_label({}) == "dense"
