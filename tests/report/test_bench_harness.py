"""The benchmark harness (scripts/bench/run_all.py) without running a benchmark: how the shared
settings map onto TRL's batch knobs, peak-memory measurement of a child process, and the
results page (ratios, smoke and busy-machine banners)."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_grpo_settings_map_to_the_same_work_in_trl(bench):
    from bench_settings import GRPOSettings

    s = GRPOSettings(prompts_per_step=8, samples_per_prompt=8, micro_batch_size=16, minibatches_per_step=2, steps=5)
    t = s.trl()
    # 64 sequences per generation; 2 optimizer steps of 32 sequences, 16 per forward.
    assert t["steps_per_generation"] * t["per_device_train_batch_size"] == 64
    assert t["gradient_accumulation_steps"] * t["per_device_train_batch_size"] == 32
    assert t["max_steps"] == 10 and t["num_generations"] == 8 and t["beta"] == 0.0
    assert "train.minibatches_per_step=2" in s.rltrain() and "algo.kl_coef=0.0" in s.rltrain()
    with pytest.raises(ValueError, match="minibatches_per_step"):
        GRPOSettings(prompts_per_step=3, samples_per_prompt=5, micro_batch_size=4).trl()


def test_dpo_settings_map_to_the_same_work_in_trl(bench):
    from bench_settings import DPOSettings

    s = DPOSettings(pairs_per_step=16, micro_batch_size=8, steps=3)
    t = s.trl()
    assert t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 16  # pairs per optimizer step
    assert t["precompute_ref_log_probs"] and s.n_train == 48 and "data.n_train=48" in s.rltrain()


def test_run_child_reports_exit_code_and_peak_rss(bench, tmp_path):
    env = bench.child_env(1)
    touch_300mb = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    rc, wall, rss = bench.run_child([sys.executable, "-c", touch_300mb], env, tmp_path / "a.log", timeout_s=60)
    assert rc == 0 and rss > 300 and wall > 0
    fail = "import sys; print('boom'); sys.exit(3)"
    rc, _, _ = bench.run_child([sys.executable, "-c", fail], env, tmp_path / "b.log", 60)
    assert rc == 3 and "boom" in (tmp_path / "b.log").read_text()
    rc, wall, _ = bench.run_child([sys.executable, "-c", "import time; time.sleep(30)"], env, tmp_path / "c.log", 0.5)
    assert rc != 0 and wall < 20


def test_results_page(bench):
    R = bench.Result
    rl = R("rltrain", "grpo", "tiny", ["python", "-m", "rltrain.cli"], step_times=[9.0, 2.0, 2.0],
           gen_tokens=[100, 200, 200], generate_s=2.0, items_per_step=64, peak_rss_mb=500, wall_s=30)
    trl = R("trl", "grpo", "tiny", ["python", "trl_worker.py"], step_times=[9.0, 5.0, 3.0],
            gen_tokens=[100, 200, 200], generate_s=4.0, items_per_step=64, peak_rss_mb=1000, wall_s=60)
    bad = R("trl", "dpo", "tiny", ["x"], rc=1, error="Traceback: it broke")
    assert rl.step_time == 2.0 and rl.tokens_per_s == 100.0 and rl.rollout_tokens_per_s == 250.0
    assert trl.step_time == 4.0 and rl.items_per_s == 32.0
    info = {"machine": bench.machine(), "versions": {"torch": "x"}, "load_before": "7.0", "load_after": "7.5",
            "date": "today", "total_s": 90.0, "argv": "python scripts/bench/run_all.py --quick"}
    text = bench.results_markdown([rl, trl, bad], {"grpo (tiny)": {"model": "tiny", "steps": 3}}, info, smoke=True,
                                  busy=bench.busy_note(7.0, 2))
    assert text.startswith("# SMOKE RUN: not a benchmark")
    assert "load average 7.0 on 2 cores" in text
    # rltrain / TRL: step time 2/4, tokens/s 100/50, memory 500/1000.
    assert "| grpo | tiny | 0.50× | 2.00× | 2.00× | 0.50× |" in text
    assert "failed (rc 1)" in text and "Traceback: it broke" in text
    assert bench.busy_note(0.5, 2) == ""


def test_set_overrides_one_algorithm(bench):
    from bench_settings import DPOSettings, GRPOSettings

    g, d = GRPOSettings(), DPOSettings()
    bench.apply_overrides(g, "grpo", ["grpo.max_new_tokens=128", "dpo.beta=0.5", "grpo.lr=1e-6"])
    bench.apply_overrides(d, "dpo", ["grpo.max_new_tokens=128", "dpo.beta=0.5"])
    assert (g.max_new_tokens, g.lr, d.beta) == (128, 1e-6, 0.5)
    with pytest.raises(SystemExit, match="no such field"):
        bench.apply_overrides(g, "grpo", ["grpo.max_tokens=3"])
    with pytest.raises(SystemExit, match="expects"):
        bench.apply_overrides(g, "grpo", ["max_new_tokens=3"])
