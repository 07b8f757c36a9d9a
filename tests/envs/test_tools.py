"""Tool calls: parsing (Hermes JSON and plain), binding, and the bounds of running one (a tool that
raises, hangs or floods gives a short message, never a crash); the calculator's safe evaluation."""
import time

import pytest

from rltrain.envs import ToolEnv, ToolSpecError, episode_factory
from rltrain.envs.calculator import Calculator, evaluate
from rltrain.envs.tools import bind, cut_middle, parse_tool_calls, run_tool, tool_methods
from rltrain.types import Sample
from tests.envs.toy_envs import Tools, Undocumented, Untyped


def _env(obj, **kw):
    opts = dict(system_prompt=None, tool_timeout_s=2.0, max_tool_output_chars=1000, max_invalid_tool_calls=2)
    return ToolEnv(obj, **{**opts, **kw})


def test_hermes_and_plain_calls_parse():
    text = ('first <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call> then '
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3, \\"b\\": 4}"}</tool_call> and <tool>add(5, b=6)</tool>')
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("add", {"a": 1, "b": 2}, None), ("add", {"a": 3, "b": 4}, None),
        ("add", {"__positional__": [5], "b": 6}, None)]
    tools = tool_methods(Tools())
    assert [bind(c, tools)[1] for c in calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 5, "b": 6}]
    assert parse_tool_calls("The answer is \\boxed{7}.") == []


@pytest.mark.parametrize("text, says", [
    ("<tool_call>{name: add}</tool_call>", "not valid JSON"),
    ('<tool_call>["add", 1]</tool_call>', "JSON object"),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', "not a JSON object"),
    ('<tool_call>{"name": "add", "arguments": {"a": 1}', "opened but not closed"),
    ("<tool>add(__import__('os').system('true'))</tool>", "literals"),
    ("<tool>os.system('true')</tool>", "name(arg, key=value)"),
    ("<tool>add(1,</tool>", "name(arg, key=value)"),
])
def test_malformed_calls_are_messages(text, says):
    (call,) = parse_tool_calls(text)
    assert call.error and says in call.error


def test_binding_errors_are_messages():
    tools = tool_methods(Tools())
    assert "unknown tool 'sub'" in bind(parse_tool_calls("<tool>sub(1, 2)</tool>")[0], tools)
    assert "wrong arguments for add" in bind(parse_tool_calls("<tool>add(1, 2, 3)</tool>")[0], tools)
    assert "wrong arguments for add" in bind(parse_tool_calls("<tool>add(a=1)</tool>")[0], tools)


def test_a_raising_tool_gives_its_error():
    ok, text = run_tool(Tools().boom, {}, timeout_s=5, max_chars=1000)
    assert not ok and text == "RuntimeError: the tool broke"


def test_a_hanging_tool_is_stopped_at_its_timeout():
    t0 = time.time()
    ok, text = run_tool(Tools().hang, {}, timeout_s=0.5, max_chars=1000)
    assert not ok and "timed out after 0.5 s" in text
    assert time.time() - t0 < 3


def test_a_flooding_tool_sends_back_a_bounded_text():
    t0 = time.time()
    ok, text = run_tool(Tools().flood, {}, timeout_s=20, max_chars=1000)
    assert ok and len(text) < 1100, len(text)
    assert text.startswith("x" * 400) and text.endswith("z" * 400) and "cut from the middle" in text
    assert "y" not in text  # what the tool wrote below Python goes nowhere
    assert time.time() - t0 < 15


def test_cut_middle_says_how_much():
    assert cut_middle("a" * 10, 10) == "a" * 10
    assert cut_middle("ab" * 10, 4) == "ab\n[... 16 characters cut from the middle ...]\nab"


def test_tool_env_loop_and_invalid_limit():
    env = _env(Tools(), max_invalid_tool_calls=1)
    msgs = env.reset(Sample("s", "What is 2 + 3?", "5"))
    assert msgs[0]["role"] == "system" and '"name": "add"' in msgs[0]["content"] and "boom" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": "What is 2 + 3?"}
    r = env.step("<tool>add(2, 3)</tool>")
    assert r.message == {"role": "tool", "content": "5"} and not r.done and r.info["tool_calls"] == 1
    r = env.step("<tool>boom()</tool>")
    assert r.message["content"] == "Error: RuntimeError: the tool broke" and not r.done
    r = env.step("<tool>add(2</tool>")  # first malformed call: told, goes on
    assert r.message["content"].startswith("Error: the tool call must look like") and not r.done
    assert r.info["invalid_calls"] == 1
    r = env.step("<tool_call>{oops}</tool_call>")  # second: more than max_invalid_tool_calls=1, the episode ends
    assert r.done and r.message is None and r.info["invalid_limit"] == 1
    assert _env(Tools()).step("It is 5.").done


def test_tools_need_docstrings_and_types():
    with pytest.raises(ToolSpecError, match="tool Undocumented.tool has no docstring"):
        _env(Undocumented())
    with pytest.raises(ToolSpecError, match="argument 'x' has no type annotation"):
        _env(Untyped())


def test_python_env_class_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_env_28.py").write_text(
        "class Calc:\n    def mul(self, a: int, b: int) -> int:\n        'Multiply.'\n        return a * b\n")
    monkeypatch.chdir(tmp_path)  # found there, like `rltrain env=python env.cls=my_env_28:Calc` started in tmp_path
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # what import_callable adds is undone
    make = episode_factory("python", cls="my_env_28:Calc", tool_timeout_s=2, max_tool_output_chars=100,
                           max_invalid_tool_calls=0)
    assert make().step("<tool>mul(6, 7)</tool>").message["content"] == "42"
    with pytest.raises(AttributeError, match="env.cls='my_env_28:Nope'"):
        episode_factory("python", cls="my_env_28:Nope", tool_timeout_s=2, max_tool_output_chars=100,
                        max_invalid_tool_calls=0)


@pytest.mark.parametrize("expr, value", [("123 + 456", 579), ("(12 - 4) * 3", 24), ("7 / 2", 3.5), ("-2 ** 3", -8),
                                         ("17 // 5 % 2", 1), ("2^10", 1024), ("3 × 4", 12)])
def test_calculator_evaluates_arithmetic(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os')", "x + 1", "(1).real", "9 ** 9 ** 9", "[1, 2]", "True + 1",
                                  "1" * 300, "10 ** 40", "lambda: 1"])
def test_calculator_refuses_anything_else(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_calculator_tool_through_the_env():
    env = _env(Calculator())
    assert env.reset(Sample("s", "What is 123 + 456?", "579"))[-1]["content"] == \
        "What is 123 + 456? Use the calculator tool for the arithmetic."
    r = env.step('<tool_call>{"name": "calculate", "arguments": {"expression": "123 + 456"}}</tool_call>')
    assert r.message["content"] == "579"
    assert env.step('<tool>calculate("1/0")</tool>').message["content"] == "Error: ZeroDivisionError: division by zero"


def test_env_options_are_checked_with_the_config():
    from rltrain.cli import compose_or_explain, to_run_config
    from rltrain.config import ConfigError, register_configs, validate

    register_configs()
    with pytest.raises(ConfigError, match="env.max_turns=0 must be ≥ 1"):
        validate(to_run_config(compose_or_explain(["model=tiny", "env=calculator", "env.max_turns=0"])))
    with pytest.raises(Exception, match="unknown option env=nope; valid options for 'env': calculator, python, python_tool, reasoning_gym, single_turn"):
        compose_or_explain(["env=nope"])
    assert to_run_config(compose_or_explain(["model=tiny"])).env.name == "single_turn"


def test_env_needs_a_loop_that_plays_episodes():
    from rltrain.cli import compose_or_explain, to_run_config
    from rltrain.config import ConfigError, register_configs, validate

    register_configs()
    with pytest.raises(ConfigError, match="env=calculator .* algo=grpo and algo=opd only, not algo=ppo"):
        validate(to_run_config(compose_or_explain(["model=tiny", "env=calculator", "algo=ppo"])))
