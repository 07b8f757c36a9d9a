"""rltrain.preflight: the checks that run before any model is loaded, called on the typed config;
and the default path's console: no warning a user cannot act on (a short real run)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs
from rltrain.preflight import PreflightError, preflight, user_error_kind

REPO = Path(__file__).resolve().parents[1]


def run_cfg(*overrides):
    register_configs()
    return to_run_config(compose_or_explain(list(overrides)))


def kind_and_message(*overrides) -> tuple[str, str]:
    with pytest.raises(PreflightError) as info:
        preflight(run_cfg(*overrides))
    return info.value.kind, str(info.value)


def test_the_embedded_default_and_the_test_model_pass():
    preflight(run_cfg())
    preflight(run_cfg("model=tiny", "algo=dpo", "data=synthetic_prefs"))


def test_each_malformed_row_is_named_by_file_and_line(tmp_path):
    good = '{"problem": "1+1?", "answer": "2"}\n'
    cases = {
        "not json": "not valid JSON",
        '["a list"]': "expected a JSON object",
        '{"problem": "2+2?"}': "neither field 'answer' nor 'solution'",
        '{"problem": "", "answer": "4"}': "field 'problem' is empty",
    }
    for bad, why in cases.items():
        f = tmp_path / "train.jsonl"
        f.write_text(good + "\n" + bad + "\n")  # the blank line 2 still counts
        kind, msg = kind_and_message("model=tiny", "data=math", f"data.path={f}")
        assert kind == "data" and f"{f}, line 3" in msg and why in msg, msg


def test_a_file_with_no_training_rows(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text("\n")
    kind, msg = kind_and_message("model=tiny", "data=math", f"data.path={f}")
    assert kind == "data" and "no training examples" in msg and "data.path" in msg


def test_hub_dataset_in_offline_mode_needs_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    kind, msg = kind_and_message("model=tiny", "data=gsm8k")
    assert kind == "data" and "data.hub_id='openai/gsm8k'" in msg and "data.path=" in msg
    # once the dataset is in the hub cache (a snapshot folder), the run may load it offline
    (tmp_path / "hub" / "datasets--openai--gsm8k" / "snapshots").mkdir(parents=True)
    preflight(run_cfg("model=tiny", "data=gsm8k"))


def test_saved_tiny_model_path_must_be_a_model_directory(tmp_path):
    kind, msg = kind_and_message("model=tiny", f"model.path={tmp_path / 'nope'}")
    assert kind == "model" and "model.path=" in msg and "does not exist" in msg
    (tmp_path / "file").write_text("x")
    kind, msg = kind_and_message("model=tiny", f"model.path={tmp_path / 'file'}")
    assert kind == "model" and "is a file" in msg


def test_dpo_without_pairs_is_a_data_error():
    kind, msg = kind_and_message("model=tiny", "algo=dpo")
    assert kind == "data" and "data=synthetic_prefs" in msg and "algo.iterative=true" in msg
    preflight(run_cfg("model=tiny", "algo=dpo", "algo.iterative=true"))


def test_combined_component_kwargs_are_checked_against_the_reward():
    kind, msg = kind_and_message("model=tiny", "reward=combined",
                                 "reward.components=[{name: math, kwargs: {corect_score: 2}}]")
    assert kind == "reward" and "reward.components[0].kwargs" in msg and "corect_score" in msg
    assert "correct_score" in msg  # lists what the reward takes


def test_slurm_step_with_local_workers_too():
    with pytest.raises(PreflightError) as info:
        preflight(run_cfg("model=tiny", "launch.nproc_per_node=2"), slurm_tasks=4)
    assert info.value.kind == "launch" and "launch.nproc_per_node=2" in str(info.value)
    preflight(run_cfg("model=tiny", "launch.nproc_per_node=2"))  # outside Slurm: local workers


def test_user_error_kinds():
    from rltrain.config import ConfigError
    from rltrain.data import DataError

    assert user_error_kind(ConfigError("x")) == "config"
    assert user_error_kind(DataError("x")) == "data"
    assert user_error_kind(PreflightError("launch", "x")) == "launch"
    assert user_error_kind(RuntimeError("a bug")) is None
    with pytest.raises(ValueError):
        PreflightError("typo", "x")


def test_preflight_of_the_default_loads_no_model():
    """The checks of the embedded default import no modeling code and build no model."""
    code = (
        "import sys, transformers\n"
        "calls = []\n"
        "orig = transformers.PreTrainedModel.__init__\n"
        "def spy(self, *a, **k):\n"
        "    calls.append(type(self).__name__); return orig(self, *a, **k)\n"
        "transformers.PreTrainedModel.__init__ = spy\n"
        "from rltrain.cli import compose_or_explain, to_run_config\n"
        "from rltrain.config import register_configs\n"
        "from rltrain.preflight import preflight\n"
        "register_configs()\n"
        "preflight(to_run_config(compose_or_explain([])))\n"
        "print(calls, sorted(m for m in sys.modules if m.startswith('transformers.models.') and 'modeling' in m))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[] []"


# --------------------------------------------------------------------------- the default path's console

# A line that only reports progress (tqdm / rich bars, the loops' own lines) is fine; anything else
# on stderr, and any warning on stdout, must ask the user to do something.
_PROGRESS = re.compile(r"(\d+%\|)|(\d+/\d+ \[)|(it/s\])")


def noise(stdout: str, stderr: str) -> list[str]:
    """Lines of a run's output that are warnings or stderr text, minus progress bars."""
    out = []
    for line in re.split(r"[\r\n]+", stderr):
        # The machine is busy with other work as the run starts (rltrain/threads.py): a user can act on it.
        if line.startswith("rltrain: warning: the load average is"):
            continue
        if line.strip() and not _PROGRESS.search(line):
            out.append(f"stderr: {line.strip()}")
    for line in stdout.splitlines():
        if re.search(r"warn|deprecat", line, re.IGNORECASE):
            out.append(f"stdout: {line.strip()}")
    return out


@pytest.mark.slow
def test_default_path_prints_no_warning_a_user_cannot_act_on(tmp_path):
    """The embedded default (SmolLM2, arith, GRPO), cut to one small step and a 4-question eval."""
    args = ["train.steps=1", "train.prompts_per_step=2", "train.samples_per_prompt=4", "train.micro_batch_size=8",
            "rollout.max_new_tokens=16", "eval.size=4", "eval.max_new_tokens=16", "log.console=false",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "PYTHONWARNINGS")}
    r = subprocess.run([sys.executable, "-m", "rltrain.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    left = noise(r.stdout, r.stderr)
    assert not left, "output a user cannot act on:\n" + "\n".join(left)
