"""A checkpoint that does not fit on its disk: refused (or abandoned) with one clear error, the staging
directory removed and the earlier checkpoint intact. Run on a real, small tmpfs mounted in a private
user and mount namespace (``unshare -rm``), so a real write really fails with ENOSPC."""
import shutil
import subprocess
import sys
import textwrap

import pytest

from rltrain.engine.checkpoint import CheckpointSpaceError
from rltrain.preflight import user_error_kind

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or not sys.platform.startswith("linux"),
                                reason="needs Linux and util-linux's unshare")

# Step 1 fits; step 2 holds a 24 MB tensor. ``policy``: MB the policy writer writes without declaring
# them (0 = none), standing for a disk that other writers fill while the checkpoint is written.
SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from rltrain.engine.checkpoint import CheckpointSpaceError, latest_checkpoint, save_checkpoint
    run, policy_mb, big_mb = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    save_checkpoint(run, 1, trainer_state={"w": torch.ones(1000)}, keep=2)

    def policy(d):
        d.mkdir()
        with open(d / "model.bin", "wb") as f:
            for _ in range(policy_mb):
                f.write(b"x" * (1 << 20))

    try:
        save_checkpoint(run, 2, trainer_state={"w": torch.ones(big_mb << 18)}, keep=2, policy_writer=policy)
    except CheckpointSpaceError as err:
        left = sorted(p.name for p in (run / "checkpoints").iterdir())
        print("REFUSED", left, latest_checkpoint(run).name, str(err), sep="|")
    else:
        print("SAVED")
""")


def _on_small_disk(tmp_path, policy_mb: int, big_mb: int = 24, size_mb: int = 64) -> str:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    cmd = f'mount -t tmpfs -o size={size_mb}m tmpfs "{mnt}" && exec "{sys.executable}" -c "$0" "$@"'
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd, SCRIPT, str(mnt / "run"), str(policy_mb), str(big_mb)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def _refused(out: str) -> tuple[str, str, str]:
    tag, left, latest, msg = out.split("|")
    assert tag == "REFUSED", out
    return left, latest, msg


def test_checkpoint_larger_than_the_free_space_is_not_started(tmp_path):
    left, latest, msg = _refused(_on_small_disk(tmp_path, policy_mb=0, big_mb=48))  # 48 MB + margin > 64 MB
    assert left == "['step_000001']" and latest == "step_000001"  # no .tmp directory left behind
    assert "no space for checkpoint step 2" in msg and "needs about" in msg and "step_000001" in msg
    assert "checkpoint.keep" in msg and "\n" not in msg


def test_disk_filling_up_while_torch_save_writes_trainer_pt(tmp_path):
    # 50 MB of undeclared policy bytes leave ~14 MB: the 24 MB trainer.pt fails inside torch.save,
    # which reports it as a RuntimeError; it still comes out as the space error.
    left, latest, msg = _refused(_on_small_disk(tmp_path, policy_mb=50))
    assert left == "['step_000001']" and latest == "step_000001"
    assert "filled up while writing" in msg


def test_disk_filling_up_while_the_policy_is_written(tmp_path):
    left, latest, msg = _refused(_on_small_disk(tmp_path, policy_mb=80))  # a plain OSError(ENOSPC)
    assert left == "['step_000001']" and "filled up while writing" in msg


def test_checkpoint_that_fits_is_saved(tmp_path):
    assert _on_small_disk(tmp_path, policy_mb=4) == "SAVED"


def test_cli_prints_the_space_error_as_a_disk_error():
    assert user_error_kind(CheckpointSpaceError("no space")) == "disk"
