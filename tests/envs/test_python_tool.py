"""env=python_tool (rltrain/envs/python_tool.py): the model's code runs in the real code sandbox, in a
namespace jail (this machine must provide one: a jail that fails to build here fails the test, only a
machine without root or namespaces skips), with bounded time and output; auto/namespace isolation fails
closed, naming env.isolation, exactly like reward=code, and never falls back to process."""
import time

import pytest

from rltrain.envs import episode_factory
from rltrain.envs import python_tool
from rltrain.envs.python_tool import CodeRunner, EnvSetupError, program
from rltrain.types import Sample
from tests.rewards.sandbox_support import NAMESPACE_UNSUPPORTED

needs_jail = pytest.mark.skipif(NAMESPACE_UNSUPPORTED is not None,
                                reason=f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
MAX_CHARS = 400


def _factory(isolation="auto", timeout_s=2.0, max_chars=MAX_CHARS):
    return episode_factory("python_tool", tool_timeout_s=timeout_s, max_tool_output_chars=max_chars,
                           max_invalid_tool_calls=2, isolation=isolation, memory_mb=1024)


def _call(env, code: str) -> str:
    """The tool message for one plain-format call of run_python."""
    res = env.step(f"<tool>run_python({code!r})</tool>")
    assert not res.done and res.info == {"tool_calls": 1.0, "invalid_calls": 0.0}, res
    assert res.message["role"] == "tool"
    return res.message["content"]


@pytest.fixture(scope="module")
def env():
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    factory = _factory()  # raises (the test fails) if the jail cannot be built on a machine that has the means
    assert factory.shared.sandbox.isolation == "namespace"
    yield factory()
    factory.close()


@needs_jail
def test_code_runs_in_the_jail_and_its_output_comes_back(env):
    first = env.reset(Sample("0", "What is 2**100?", ""))
    assert "run_python" in first[0]["content"] and "run_python tool" in first[-1]["content"]
    assert _call(env, "print(2**100)") == f"{2**100}\n"
    assert _call(env, "x = 6\nx * 7") == "42\n"  # a last expression is printed, like a notebook cell
    assert _call(env, "x = 1") == "(the code printed nothing)"
    # the jail: not root, no host files, no network, no state between calls
    assert _call(env, "import os\nos.getuid() > 0") == "True\n"
    assert "FileNotFoundError" in _call(env, "open('/etc/passwd').read()")
    assert "OSError" in _call(env, "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)")
    assert "NameError: name 'x' is not defined" in _call(env, "print(x)")


@needs_jail
def test_errors_are_tracebacks_of_the_models_own_code(env):
    text = _call(env, "def f(n):\n    return 1 / n\n\nprint('before')\nf(0)")
    assert text.startswith("before\nTraceback (most recent call last):\n")
    assert 'File "<code>", line 5' in text and "return 1 / n" in text and "ZeroDivisionError" in text
    assert "_main" not in text and "SOURCE" not in text  # the wrapper's frames are not shown
    assert "SyntaxError" in _call(env, "def f(:")
    assert _call(env, "import sys\nsys.exit(3)") == "SystemExit: 3\n"


@needs_jail
def test_a_hanging_call_is_stopped_at_its_timeout(env):
    t0 = time.monotonic()
    text = _call(env, "while True:\n    pass")
    assert text == "Error: the code ran longer than 2 s and was stopped"
    assert time.monotonic() - t0 < 8
    assert _call(env, "import time\ntime.sleep(3600)") == "Error: the code ran longer than 2 s and was stopped"


@needs_jail
def test_ten_megabytes_of_output_give_a_bounded_message(env):
    text = _call(env, "print('a' * 5_000_000 + 'b' * 5_000_000)")
    assert len(text) <= MAX_CHARS + 80 and text.startswith("a" * 100) and text.rstrip().endswith("b" * 100)
    assert f"[... {10_000_001 - MAX_CHARS} characters cut from the middle ...]" in text
    # around sys.stdout, straight to file descriptor 1: the sandbox's file-size limit stops it
    text = _call(env, "import os\nos.write(1, b'y' * 10_000_000)")
    assert text.startswith("Error: the code was stopped") and len(text) < 300, text
    text = _call(env, "import sys\nfor _ in range(10_000_000): sys.__stdout__.write('z')")
    assert text.startswith("Error: the code was stopped") and len(text) < 300, text
    assert "MemoryError" in _call(env, "a = [0] * 10**10")


def test_the_wrapper_keeps_head_and_tail():
    """The in-jail buffer (run here in-process, stdout captured) keeps exactly the first and last characters."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", program("print('0123456789' * 100, end='')", 40)],
                         capture_output=True, text=True, timeout=60).stdout
    assert out == "01234567890123456789\n[... 960 characters cut from the middle ...]\n01234567890123456789"
    short = subprocess.run([sys.executable, "-c", program("print('abc')", 40)],
                           capture_output=True, text=True, timeout=60).stdout
    assert short == "abc\n"


def test_auto_and_namespace_fail_closed_naming_env_isolation(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for isolation in ("auto", "namespace"):
        with pytest.raises(EnvSetupError) as info:
            _factory(isolation)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"env.isolation={isolation}: ")
        assert "not running as root" in message and "env.isolation=process" in message
    with pytest.raises(EnvSetupError, match="env.isolation must be one of auto, namespace, process"):
        CodeRunner(isolation="docker", timeout_s=1, max_chars=100, memory_mb=256)


def test_process_isolation_is_explicit_and_said_once(monkeypatch, capsys):
    monkeypatch.setattr(python_tool, "_PROCESS_WARNING_SHOWN", False)
    factories = [_factory("process"), _factory("process")]
    try:
        assert factories[0].shared.sandbox.isolation == "process"
        assert _call(factories[0](), "print(6 * 7)") == "42\n"
    finally:
        for f in factories:
            f.close()
    err = capsys.readouterr().err
    assert err.count("env.isolation=process: the model's code is NOT contained") == 1


def test_preflight_refuses_an_unbuildable_jail_before_any_model_loads(monkeypatch):
    from rltrain.cli import compose_or_explain, to_run_config
    from rltrain.config import register_configs
    from rltrain.preflight import PreflightError, check_env

    register_configs()
    cfg = to_run_config(compose_or_explain(["env=python_tool", "model=tiny"]))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(PreflightError) as info:
        check_env(cfg)
    assert info.value.kind == "env" and str(info.value).startswith("env.isolation=auto: the namespace jail")


@needs_jail
def test_the_factory_closes_its_sandbox():
    factory = _factory()
    sandbox = factory.shared.sandbox
    assert _call(factory(), "print(1)") == "1\n"
    assert sandbox._zygote is not None
    factory.close()
    assert factory.shared is None and sandbox._zygote is None
