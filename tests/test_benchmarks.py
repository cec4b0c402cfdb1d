"""benchmarks/train_throughput.py: the measured fields, gradient accumulation and the FLOPs count."""

import json
import math

import pytest

from benchmarks import train_throughput as bench

# DiT-XL/2 at 256 px: 118.6 forward GMACs (DiT paper, "Gflops"), 6 FLOPs per MAC for a training step.
XL2_TRAIN_FLOPS = 6 * 118.6e9


def test_reports_finite_fields_with_accumulation(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    args = bench.parse_args(["--model", "DiT-Ti/4", "--image-size", "16", "--vae", "none", "--num-classes", "10",
                             "--batch-size", "4", "--micro-batch-size", "2", "--warmup", "1", "--steps", "2",
                             "--output", str(out)])
    (record,) = bench.main(args)
    assert record["accumulation_steps"] == 2 and record["input_shape"] == [3, 16, 16]
    for key in ("step_time_mean_s", "step_time_median_s", "images_per_sec", "train_flops_per_image", "loss"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    assert record["peak_memory_bytes"] > 0
    assert record["images_per_sec"] == pytest.approx(4 / record["step_time_mean_s"])
    if record["peak_flops"] is None:  # CPU: no known peak, so no MFU
        assert record["mfu"] is None
    else:
        assert 0 < record["mfu"] < 1
    assert json.loads(out.read_text().splitlines()[-1])["model"] == "DiT-Ti/4"
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| DiT-Ti/4 | 3x16x16 |") and row.endswith("|")


def test_latent_geometry_without_weights():
    assert bench.latent_geometry("ema") == (4, 8)
    assert bench.latent_geometry("none") == (3, 1)


def test_bad_micro_batch_is_refused():
    with pytest.raises(ValueError, match="divide --batch-size"):
        bench.validate(bench.parse_args(["--batch-size", "6", "--micro-batch-size", "4"]))


def test_xl2_training_flops_match_the_paper():
    try:
        flops = bench.count_train_flops("DiT-XL/2", 4, 32, 1000)
    except (NotImplementedError, RuntimeError) as e:
        pytest.skip(f"FlopCounterMode does not run on the meta device here: {e}")
    assert flops == pytest.approx(XL2_TRAIN_FLOPS, rel=0.02)
    assert flops == pytest.approx(0.712e12, rel=0.02)


@pytest.mark.slow
def test_compile_flag_runs_the_compiled_step():
    args = bench.parse_args(["--model", "DiT-Ti/4", "--image-size", "16", "--vae", "none", "--num-classes", "10",
                             "--batch-size", "4", "--micro-batch-size", "2", "--warmup", "1", "--steps", "1",
                             "--compile"])
    (record,) = bench.main(args)
    assert record["compile"] and math.isfinite(record["loss"]) and record["images_per_sec"] > 0


def test_dmd2_step_benchmark_times_both_kinds_of_step():
    """benchmarks/dmd2_step.py (the GPU measurement of docs/benchmarks.md) on a tiny teacher: generator and
    guidance-only steps, finite times, the peak memory."""
    import math

    from benchmarks.dmd2_step import main, parse_args

    rows = main(parse_args(["--model", "DiT-Ti/4", "--image-size", "32", "--batch-size", "2", "--steps", "2",
                            "--warmup", "0", "--dfake-gen-update-ratio", "2", "--mixed-precision", "no"]))
    assert [r["step"] for r in rows] == ["generator", "guidance"]
    assert all(math.isfinite(r["mean_s"]) and r["mean_s"] > 0 and r["peak_gib"] > 0 for r in rows)
    rows = main(parse_args(["--model", "DiT-Ti/4", "--image-size", "32", "--batch-size", "2", "--steps", "1",
                            "--warmup", "0", "--mixed-precision", "no", "--gradient-checkpointing"]))
    assert rows[0]["gradient_checkpointing"] and math.isfinite(rows[0]["mean_s"])


def test_a_compiled_measurement_leaves_no_compile_setting_behind(monkeypatch):
    """accelerate keeps its state per process: a benchmark with --compile must not make every later
    Accelerator of the process (a test's training run) compile its models, even when it fails."""
    from accelerate import Accelerator

    def measure(args, precision, device):
        bench.accelerator_for(precision, compile_model=True)
        raise RuntimeError("stopped after building the compiled accelerator")

    monkeypatch.setattr(bench, "measure", measure)
    with pytest.raises(RuntimeError, match="stopped"):
        bench.main(bench.parse_args(["--model", "DiT-Ti/4", "--image-size", "16", "--vae", "none", "--compile"]))
    assert Accelerator(cpu=True).state.dynamo_plugin.backend.value == "NO"
