"""The vLLM engine's tests run in .venv-vllm, where ``make vllm`` installed vLLM; ``make test`` runs them
there after the main suite (which ignores this folder). Collected in a Python without vLLM, they are
left out (not skipped): the run that is meant to have vLLM then collects no test and pytest fails.

Most of the folder's time is vLLM's start-up (an import and an engine per run), so a finished vLLM run that
several tests read is made once per session (``vllm_run``)."""
import importlib.util
import os
import uuid
from types import SimpleNamespace

import pytest
import torch._dynamo.config

collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["test_*.py"]

# vLLM's sampler torch.compiles two small functions (the sampled token's rank, a random draw) at an engine's
# first generate, enforce_eager or not: 2-5 s in every process on this CPU. The runs these tests start skip it
# (TORCH_COMPILE_DISABLE in their environment; rltrain compiles nothing itself); the engines of this process
# compile as a user's run does, and test_vllm_engine checks that both sample the same tokens and log-probs.
os.environ["TORCH_COMPILE_DISABLE"] = "1"
torch._dynamo.config.disable = False


@pytest.fixture(scope="session")
def vllm_run(tmp_path_factory):
    """One GRPO run through the command with vLLM (``test_vllm_grpo.VLLM_RUN``: 6 steps, checkpoints at
    steps 2, 4 and 6, the initial evaluation's 8 greedy answers written), read by the GRPO checks (every step's
    log-probs the trainer's, the greedy answers, OPD's teacher), as the uninterrupted run that the resumed
    run must replay, and as the 1-rank run that a 2-rank ZeRO-3 run's step 1 must equal. ``left``: the run's
    processes still alive right after it ended (none expected)."""
    from tests.cli import run_ok
    from tests.vllm_engine.test_vllm_grpo import VLLM_RUN, marked_processes

    run_dir, mark = tmp_path_factory.mktemp("vllm_run"), uuid.uuid4().hex
    out = run_ok(VLLM_RUN, run_dir, RLTRAIN_TEST_MARK=mark)
    return SimpleNamespace(dir=run_dir, out=out, left=marked_processes(mark))
