"""reward=code: code extraction, output comparison, per-test outcomes and the three modes."""
import json

import pytest

from rltrain.rewards.base import score_safely
from rltrain.rewards.code import CodeReward, extract_code, program_status, score
from rltrain.rewards.code_compare import call_result_matches, stdout_matches
from rltrain.types import Sample

ADD_IO = {"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]}
ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
ADD_WRONG_ON_ZERO = "```python\na, b = map(int, input().split())\nprint(a + b if a else 1)\n```"
ADD_CRASH_ON_ZERO = "```python\na, b = map(int, input().split())\nprint(a + b if a else 1 // a)\n```"


def fence(code: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{code}\n```\nDone."


def sample(io: dict, as_json: bool = False) -> Sample:
    return Sample(id="p", question="q", meta={"input_output": json.dumps(io) if as_json else io})


@pytest.fixture(scope="module")
def rewards():
    made = {mode: CodeReward(mode=mode, timeout=2.0, num_workers=2) for mode in ("all_pass", "pass_rate", "shaped")}
    yield made
    for reward in made.values():
        reward.close()


def test_extract_code_prefers_the_last_python_block():
    text = "```python\nfirst\n```\ntext\n```python\nsecond\n```\n```\noutput sample\n```"
    assert extract_code(text) == "second\n"
    assert extract_code("```\nuntagged\n```") == "untagged\n"
    assert extract_code("```cpp\nint main(){}\n```") == "int main(){}\n"  # last block of any kind
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # unclosed final fence (truncated generation)
    assert extract_code("no code here") is None


def test_stdout_comparison_is_whitespace_and_float_tolerant():
    assert stdout_matches("1 2\n3\n", "1 2\n3")
    assert stdout_matches("1\n2\n", "1 2")  # tokens, not lines
    assert stdout_matches("  7  \r\n\n", "7\n")
    assert stdout_matches("0.3333333", "0.333333333", 1e-6)
    assert not stdout_matches("0.3334", "0.333333333", 1e-6)
    assert stdout_matches("1e6", "1000000.0000001")  # relative above 1
    assert not stdout_matches("12345678901234567890", "12345678901234567891")  # ints exact
    assert not stdout_matches("YES", "yes")
    assert not stdout_matches("1 2", "1 2 3")
    assert stdout_matches("a\nb", ["a", "b"])  # expected output stored as a list of lines
    assert stdout_matches("nan", "nan") and not stdout_matches("nan", "0.5")


def test_call_result_comparison():
    assert call_result_matches("[1, 2]", [[1, 2]])  # APPS wraps the return value in a list
    assert call_result_matches("[1, 2]", [1, 2])
    assert call_result_matches("3", [3])
    assert call_result_matches("0.1", [0.1000000001])
    assert call_result_matches('{"a": [1, 2.0]}', {"a": [1, 2]})
    assert not call_result_matches("true", [1])  # bools are not numbers
    assert not call_result_matches("[1, 2]", [[2, 1]])
    assert not call_result_matches("'not json'", [1])


def test_scoring_modes_from_outcomes():
    assert score(["pass", "pass"], "all_pass") == 1.0
    assert score(["pass", "wrong_answer"], "all_pass") == 0.0
    assert score(["pass", "wrong_answer", "pass", "timeout"], "pass_rate") == 0.5
    assert score(["compile_error"], "shaped") == -1.0
    assert score(["wrong_answer", "runtime_error"], "shaped") == -0.6  # runtime beats wrong (CodeRL)
    assert score(["pass", "timeout", "skipped"], "shaped") == -0.6
    assert score(["pass", "wrong_answer"], "shaped") == -0.3
    assert score(["pass", "pass"], "shaped") == 1.0
    assert program_status(["pass", "timeout", "runtime_error"]) == "timeout"  # the first error


def test_code_reward_end_to_end(rewards):
    samples = [sample(ADD_IO), sample(ADD_IO, as_json=True), sample(ADD_IO), sample(ADD_IO), sample(ADD_IO)]
    completions = [ADD, ADD, ADD_WRONG_ON_ZERO, ADD_CRASH_ON_ZERO, "I don't know."]
    out = rewards["all_pass"](samples, completions)
    assert out.scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert out.info["correct"] == [True, True, False, False, False]
    assert out.info["code/status"] == ["pass", "pass", "wrong_answer", "runtime_error", "compile_error"]
    assert out.info["code/outcomes"][2] == ["pass", "pass", "wrong_answer"]
    assert out.info["code/outcomes"][3] == ["pass", "pass", "runtime_error"]
    assert "ZeroDivisionError" in out.info["code/error"][3]
    assert out.info["code/error"][4] == "no fenced code block in the completion"

    rate = rewards["pass_rate"](samples, completions)
    assert rate.scores == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3, 0.0])
    shaped = rewards["shaped"](samples, completions + [])
    assert shaped.scores == [1.0, 1.0, -0.3, -0.6, -1.0]
    assert rewards["shaped"]([sample(ADD_IO)], [fence("print(")]).scores == [-1.0]


def test_all_pass_stops_at_the_first_error_but_pass_rate_runs_everything(rewards):
    io = {"inputs": ["0", "1", "2"], "outputs": ["x", "1", "2"]}
    crash_first = fence("n = int(input())\nprint(1 // n if n == 0 else n)")
    assert rewards["all_pass"]([sample(io)], [crash_first]).info["code/outcomes"][0] == [
        "runtime_error", "skipped", "skipped"]
    rate = rewards["pass_rate"]([sample(io)], [crash_first])
    assert rate.info["code/outcomes"][0] == ["runtime_error", "pass", "pass"]
    assert rate.scores == [pytest.approx(2 / 3)]


def test_call_based_functions_and_class_solution(rewards):
    io = {"fn_name": "two_sum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], "outputs": [[[0, 1]], [[1, 2]]]}
    function = fence(
        "def two_sum(nums, target):\n"
        "    seen = {}\n"
        "    for i, x in enumerate(nums):\n"
        "        if target - x in seen:\n"
        "            return (seen[target - x], i)\n"
        "        seen[x] = i"
    )
    method = fence(
        "class Solution:\n"
        "    def two_sum(self, nums: List[int], target: int) -> List[int]:\n"  # header provides List
        "        pairs = [[i, j] for i in range(len(nums)) for j in range(i + 1, len(nums))]\n"
        "        return next(p for p in pairs if nums[p[0]] + nums[p[1]] == target)"
    )
    missing = fence("def other(nums, target):\n    return [0, 1]")
    out = rewards["all_pass"]([sample(io)] * 3, [function, method, missing])
    assert out.scores == [1.0, 1.0, 0.0]
    assert out.info["code/status"][2] == "runtime_error"
    assert "two_sum" in out.info["code/error"][2]


def test_hostile_completion_scores_as_failure_and_the_batch_goes_on(rewards):
    io = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    completions = [fence("while True:\n    pass"), fence("import os\nos.kill(os.getppid(), 9)"), ADD]
    out = rewards["all_pass"]([sample(io)] * 3, completions)
    assert out.scores == [0.0, 0.0, 1.0]
    assert out.info["code/status"][0] == "timeout"


def test_max_tests_and_float_tolerance():
    reward = CodeReward(max_tests=1, float_tol=1e-3, num_workers=1, timeout=2.0)
    try:
        io = {"inputs": ["", ""], "outputs": ["0.3333", "999"]}
        out = reward([sample(io)], [fence("print(1 / 3)")])
        assert out.scores == [1.0] and out.info["code/outcomes"] == [["pass"]]
    finally:
        reward.close()


def test_bad_tests_fail_through_score_safely(rewards):
    good, bad = sample(ADD_IO), Sample(id="x", question="q", meta={})
    out = score_safely(rewards["all_pass"], [good, bad, good], [ADD, ADD, ADD], max_fail_fraction=0.5)
    assert out.scores == [1.0, 0.0, 1.0]
    assert out.info["failed"] == [False, True, False]
    assert "input_output" in out.info["error"][1]


def test_options_are_validated():
    with pytest.raises(ValueError, match="mode"):
        CodeReward(mode="partial")
    with pytest.raises(ValueError, match="max_tests"):
        CodeReward(max_tests=0)


# ---------------------------------------------------------------- hostile output, fail closed


def test_numbers_of_any_length_compare_without_int_conversion():
    big = "1" + "0" * 10000  # int() refuses strings over 4300 digits
    assert stdout_matches(big, big + "\n") and stdout_matches("000" + big, big)
    assert not stdout_matches(big + "1", big) and not stdout_matches("-" + big, big)
    assert stdout_matches("-0", "0") and stdout_matches("+7", "7")
    assert not stdout_matches("1_0", "10") and not stdout_matches("0x10", "16")  # float()/int() syntax extras
    assert not stdout_matches("9" * 100000, "5")
    assert not stdout_matches("x " * 100000, "x")  # a token flood is streamed, not split


def test_call_results_of_hostile_json_are_mismatches():
    assert not call_result_matches("[" * 100000 + "]" * 100000, [[1]])
    assert not call_result_matches("[[[[1]]]]", [[1]])  # deeper than expected: not compared
    assert not call_result_matches("9" * 5000, [5])
    assert call_result_matches("9" * 5000, [int("9" * 4000) * 10**1000 + int("9" * 1000)])
    assert not call_result_matches("[1, ", [1])


def test_preflight_decides_the_isolation_up_front(monkeypatch, capsys):
    import rltrain.rewards.code as code
    from rltrain.rewards.base import RewardSetupError
    from sandbox_support import NAMESPACE_UNSUPPORTED

    if NAMESPACE_UNSUPPORTED is None:
        assert code.preflight("auto") == "namespace"
        assert code.preflight("namespace") == "namespace"
    monkeypatch.setattr(code, "_PROCESS_WARNING_SHOWN", False)
    assert code.preflight("process") == "process" and code.preflight("process") == "process"
    err = capsys.readouterr().err
    assert err.count("NOT contained") == 1 and "/proc" in err and "network" in err
    with pytest.raises(RewardSetupError, match="reward.isolation"):
        code.preflight("docker")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for isolation in ("auto", "namespace"):
        with pytest.raises(RewardSetupError) as info:
            code.preflight(isolation)
        message = str(info.value)
        assert "\n" not in message and f"reward.isolation={isolation}" in message
        assert "not running as root" in message and "root" in message and "reward.isolation=process" in message
        with pytest.raises(RewardSetupError):  # the reward itself refuses too: no downgrade
            CodeReward(isolation=isolation)([sample(ADD_IO)], [ADD])


def test_setup_errors_are_not_retried_or_scored_around(monkeypatch):
    from rltrain.rewards.base import RewardSetupError

    calls = []

    def broken(samples, completions):
        calls.append(len(completions))
        raise RewardSetupError("reward.isolation=auto: no jail")

    with pytest.raises(RewardSetupError):
        score_safely(broken, [sample(ADD_IO)] * 3, [ADD] * 3, max_fail_fraction=1.0)
    assert calls == [3]


def test_a_program_that_fails_to_score_costs_only_itself(rewards, monkeypatch):
    import rltrain.rewards.code as code

    calls, judge = [], code.judge_run

    def judge_once_broken(run, outputs, fn_name, tol, deadline=None):
        calls.append(1)
        if run.tests[0].output.endswith(b" \n"):  # the second program (runs are judged as they end)
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return judge(run, outputs, fn_name, tol, deadline)

    monkeypatch.setattr(code, "judge_run", judge_once_broken)
    spaced = ADD.replace("print(a + b)", "print(a + b, end=' \\n')")
    out = score_safely(rewards["all_pass"], [sample(ADD_IO)] * 3, [ADD, spaced, ADD], max_fail_fraction=0.5)
    assert out.scores == [1.0, 0.0, 1.0]
    assert out.info["failed"] == [False, True, False] and "4300" in out.info["error"][1]
    assert len(calls) == 3  # judged once each: the batch was not re-scored


def test_a_jail_failing_mid_run_fails_programs_and_never_downgrades(tmp_path):
    from rltrain.rewards.base import RewardFailureError
    from sandbox_support import NAMESPACE_UNSUPPORTED

    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    reward = CodeReward(timeout=2.0, num_workers=1, isolation="auto")
    try:
        assert reward([sample(ADD_IO)], [ADD]).scores == [1.0]
        reward.sandbox._plan = [("/no/such/source", "/usr")]  # every jail build now fails
        marker = tmp_path / "ran-uncontained"
        escape = f"```python\nopen({str(marker)!r}, 'w').write('x')\nprint(3)\n```"
        out = score_safely(reward, [sample(ADD_IO)] * 2, [escape, ADD], max_fail_fraction=1.0)
        assert out.scores == [0.0, 0.0] and out.info["failed"] == [True, True]
        assert "sandbox" in out.info["error"][0]
        assert reward.sandbox.isolation == "namespace" and not marker.exists()
        with pytest.raises(RewardFailureError, match="reward.max_fail_fraction"):
            score_safely(reward, [sample(ADD_IO)] * 2, [ADD] * 2, max_fail_fraction=0.5)
    finally:
        reward.close()


def test_inside_combined_a_failed_program_still_counts(rewards, monkeypatch):
    import rltrain.rewards.code as code
    from rltrain.rewards.combined import CombinedReward

    judge = code.judge_run
    monkeypatch.setattr(code, "judge_run", lambda run, o, f, t, d=None: (_ for _ in ()).throw(RecursionError("deep"))
                        if run.tests[0].output == b"7\n" else judge(run, o, f, t, d))
    combined = CombinedReward([{"reward": rewards["all_pass"], "label": "code", "weight": 2.0}])
    io = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    wrong = "```python\nprint(7)\n```"
    out = score_safely(combined, [sample(io)] * 2, [ADD, wrong], max_fail_fraction=1.0)
    assert out.scores == [2.0, 0.0] and out.info["failed"] == [False, True]
