"""The ``rltrain`` command: compose the Hydra config, validate it, write it into the run
directory, and hand it to the launcher (in-process, N local workers, or one Slurm task).

Overrides are checked up front with Hydra's compose API so that a mistyped key, a wrong type or an
unknown option fails with a message that names the key and lists the valid choices, instead of a
Hydra traceback. Then ``rltrain.preflight`` checks the user's inputs (data source and rows, reward
setup, model path, DeepSpeed and launch settings) before Hydra's app starts, so before any model is
loaded. Every user error is one line on stderr, ``rltrain: <kind> error: ...``, and exit code 2;
``HYDRA_FULL_ERROR=1`` raises it with its traceback instead.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from rltrain import threads

threads.set_wait_policy()  # before torch loads (rltrain.config imports it): OpenMP reads it once

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from rltrain.preflight import user_error_kind  # noqa: E402

# rltrain.config (and with it torch) is imported where it is used, so that `rltrain --help` answers
# at once.

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
GROUPS = ["algo", "token_selection", "policy_loss", "reward", "data", "env", "model", "deepspeed", "experiment"]


def group_options(group: str) -> list[str]:
    """Options of a config group: the yaml files in conf/<group>/."""
    d = Path(CONF_DIR) / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _node_keys(cfg, dotted: str) -> tuple[str, list[str]]:
    """(existing parent path, its keys) for a dotted key that may not exist."""
    parts = dotted.split(".")
    node, path = cfg, []
    for part in parts[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node, path = node[part], path + [part]
        else:
            break
    keys = list(node.keys()) if isinstance(node, DictConfig) else []
    return ".".join(path), keys


def explain_override_error(err: Exception, overrides: list[str]) -> str:
    """Turn a Hydra composition error into one message naming the key and the valid choices."""
    from hydra import compose, initialize_config_dir

    text = str(err)
    m = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        return (f"unknown option {group}={option}; valid options for '{group}': "
                f"{', '.join(group_options(group))}")
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' not in", text)
    if m:
        key = m.group(1)
        # Compose without the offending override to list the keys that do exist there.
        rest = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
        try:
            with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
                cfg = compose("config", overrides=rest)
            parent, keys = _node_keys(cfg, key)
        except Exception:  # noqa: BLE001 - best effort: fall back to Hydra's own text
            return text
        where = f"'{parent}'" if parent else "the top level"
        return f"unknown config key '{key}'; valid keys under {where}: {', '.join(keys)}"
    m = re.search(r"Error merging override (\S+)", text)
    if m:
        cause = err.__cause__ or err
        first = str(cause).splitlines()[0]
        return f"bad value in override '{m.group(1)}': {first}"
    return text


_registered = False


def _register_configs() -> None:
    """The schemas into Hydra's ConfigStore, once per process."""
    global _registered
    if not _registered:
        from rltrain.config import register_configs

        register_configs()
        _registered = True


def compose_or_explain(overrides: list[str]):
    """Compose the config with the compose API; raise ConfigError with a clear message."""
    from hydra import compose, initialize_config_dir

    from rltrain.config import ConfigError

    _register_configs()

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            return compose("config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - any composition failure becomes one clear message
        raise ConfigError(explain_override_error(err, overrides)) from err


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The typed config (dataclasses all the way down); a required key left unset is named."""
    from omegaconf.errors import MissingMandatoryValue

    from rltrain.config import ConfigError

    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(f"required key '{key}' has no value; set it on the command line ({key}=...)") from err


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The config overrides among argv, or None when Hydra's own flags make pre-checking moot."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--version") or a.startswith("--info")
           for a in argv):
        return None
    out = []
    for a in argv:
        if a.startswith("-"):
            continue
        if "=" in a and not a.lstrip("+~").startswith("hydra"):
            key, value = a.split("=", 1)
            if "," in value and ("-m" in argv or "--multirun" in argv):
                value = value.split(",")[0]  # a sweep: check its first value
            out.append(f"{key}={value}")
    return out


def checked_config(cfg: DictConfig) -> RunConfig:
    """``cfg`` typed and validated (the rules of ``rltrain.config.validate``)."""
    from rltrain import launch
    from rltrain.config import validate

    run_cfg = to_run_config(cfg)
    validate(run_cfg, world_size=launch.planned_world_size(run_cfg))
    return run_cfg


@dataclass
class _Checked:
    """The config ``main`` composed and validated, handed to the ``run_job`` of that same config so
    that this process checks it once: a single run's job, or a sweep's first job."""

    composed: DictConfig
    run_cfg: RunConfig
    preflight_done: bool  # a single run; a sweep's jobs each run their own preflight in run_job


_checked: _Checked | None = None


def _take_checked(cfg: DictConfig) -> _Checked | None:
    """What ``main`` checked, when ``cfg`` is that config (Hydra composed it again for its app: the
    same unless an argument main does not pre-compose, e.g. ``--config-name``, changed it); at most
    once, since launching fills in the typed config (run_dir, the resolved dtype)."""
    global _checked
    checked, _checked = _checked, None
    return checked if checked is not None and checked.composed == cfg else None


def run_job(cfg: DictConfig) -> dict:
    """Body of the Hydra app: one run (one job of a sweep).

    A user error found here (a job of a sweep, whose config ``main`` did not check; or one only
    loading can find, like a bad row of a hub dataset) is printed as one line and exits with 2,
    like the ones ``main`` catches; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
    """
    from hydra.core.hydra_config import HydraConfig

    from rltrain import launch

    try:
        checked = _take_checked(cfg)
        run_cfg = checked.run_cfg if checked is not None else checked_config(cfg)
        if run_cfg.run_dir is None:
            run_cfg.run_dir = HydraConfig.get().runtime.output_dir
        if checked is None or not checked.preflight_done:
            run_preflight(run_cfg)
        quiet_accelerator_detection()
        return launch.launch(run_cfg)
    except Exception as err:  # noqa: BLE001 - user errors become one line, the rest propagate
        if user_error_kind(err) is None or _full_error():
            raise
        _exit_user_error(err)


def run_preflight(run_cfg: RunConfig) -> None:
    """``rltrain.preflight`` on the typed config, in the launching process (local workers never
    run it; every task of a multi-task Slurm step does, so that all of them stop, not just rank 0
    while the others wait ``launch.timeout_s`` for it)."""
    from rltrain import launch
    from rltrain.preflight import preflight

    world = launch.slurm_world()
    preflight(run_cfg, slurm_tasks=world[1] if world else None)


def quiet_accelerator_detection() -> None:
    """Tell DeepSpeed the accelerator when there is no GPU, and keep its compiler probes quiet. transformers' ``save_pretrained``
    imports DeepSpeed whenever it is installed (through accelerate's unwrap), and DeepSpeed's
    auto-detection then warns "Setting accelerator to CPU" on every run, DeepSpeed or not; with
    ``DS_ACCELERATOR=cpu`` it says nothing. Set before the workers start (they inherit it)."""
    import logging

    # Hydra's job logging shows INFO: DeepSpeed's op compatibility probes (at its import) would print
    # their gcc command lines through setuptools' compiler logger.
    logging.getLogger("compilers").setLevel(logging.WARNING)
    if "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _exit_user_error(err: BaseException) -> None:
    from rltrain.preflight import one_line

    print(f"rltrain: {user_error_kind(err)} error: {one_line(err)}", file=sys.stderr)
    sys.exit(2)


HELP = """rltrain: RL post-training of language models (DPO, PPO, GRPO, SPO).

Usage: rltrain [GROUP=OPTION ...] [key=value ...] [-m for sweeps] [--cfg job]

Config groups (conf/<group>/):
{groups}

Examples:
  rltrain                                     # GRPO, SmolLM2-135M-Instruct, two-digit addition, CPU
  rltrain algo=spo_tree data=math data.path=train.jsonl
  rltrain algo=grpo token_selection=high_entropy policy_loss=kl_cov
  rltrain -m algo=grpo,spo_chain seed=0,1,2
  rltrain --cfg job                           # print the resolved config
"""


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in ("--help", "-h"):
        groups = "\n".join(f"  {g:16s} {', '.join(group_options(g)) or '(none yet)'}" for g in GROUPS)
        print(HELP.format(groups=groups))
        return
    _register_configs()
    overrides = _user_overrides(argv)
    if overrides is not None:
        global _checked
        sweep = "-m" in argv or "--multirun" in argv
        try:
            cfg = compose_or_explain(overrides)
            if "--cfg" not in argv and "-c" not in argv:
                run_cfg = checked_config(cfg)
                if not sweep:  # a sweep's jobs differ: each runs its own preflight in run_job
                    run_preflight(run_cfg)
                _checked = _Checked(cfg, run_cfg, preflight_done=not sweep)
        except Exception as err:  # noqa: BLE001 - user errors become one line, the rest propagate
            if user_error_kind(err) is None or _full_error():
                raise
            _exit_user_error(err)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    app = hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)(run_job)
    app()


if __name__ == "__main__":
    main()
