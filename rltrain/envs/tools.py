"""Tools: their descriptions from typed, documented methods, tool-call parsing, and running a call
with bounds (time, output size) so that a tool that hangs, raises or floods gives the model a short
message instead of stopping the run.

Two call formats are parsed (the first that matches wins, per call):

- Hermes / Qwen: ``<tool_call>{"name": "calculate", "arguments": {"expression": "2+3"}}</tool_call>``
  (the JSON object may also say ``"parameters"``; ``arguments`` may be a JSON string of an object);
- plain: ``<tool>calculate("2+3")</tool>`` or ``<tool>calculate(expression="2+3")</tool>``, the
  arguments Python literals (parsed with ``ast.literal_eval``, never evaluated).

A call that cannot be parsed, names no tool, or has arguments that do not bind to the tool's
signature is a ``ToolCall`` with ``error`` set: the environment says so to the model.
"""
from __future__ import annotations

import ast
import inspect
import io
import json
import multiprocessing
import os
import re
import signal
import sys
import typing
from dataclasses import dataclass, field

HERMES_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
PLAIN_RE = re.compile(r"<tool>(.*?)</tool>", re.DOTALL)
# An opening tag without its closing tag is a malformed call too (the model stopped mid-call).
UNCLOSED_RE = re.compile(r"<tool_call>(?!.*</tool_call>)|<tool>(?!.*</tool>)", re.DOTALL)

HOOKS = ("reset", "step", "reward", "shared")  # methods of an environment class that are not tools
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


class ToolSpecError(ValueError):
    """An environment class whose tools cannot be described (no docstring, untyped argument)."""


@dataclass
class ToolCall:
    """One parsed call: ``name`` and keyword ``arguments``, or ``error`` (what is wrong, for the model)."""

    name: str = ""
    arguments: dict = field(default_factory=dict)
    error: str | None = None


def tool_methods(obj) -> dict[str, typing.Callable]:
    """The public methods of ``obj`` other than the hooks (``reset``, ``step``, ``reward``, ``shared``): its tools."""
    out = {}
    for name in dir(type(obj)):
        if name.startswith("_") or name in HOOKS:
            continue
        attr = getattr(obj, name)
        if inspect.ismethod(attr) or inspect.isfunction(attr):
            out[name] = attr
    return out


def tool_schema(name: str, fn, *, owner: str) -> dict:
    """The JSON schema of tool ``fn`` (OpenAI function format) from its signature and docstring.

    Raises:
        ToolSpecError: no docstring, or an argument without a type annotation; names ``owner.name``.
    """
    doc = inspect.getdoc(fn)
    if not doc:
        raise ToolSpecError(f"tool {owner}.{name} has no docstring; the model is shown each tool's docstring, "
                            "so every tool method needs one")
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolSpecError(f"tool {owner}.{name}: *args/**kwargs cannot be described to the model; "
                                "name each argument")
        if pname not in hints:
            raise ToolSpecError(f"tool {owner}.{name}: argument {pname!r} has no type annotation")
        props[pname] = {"type": _JSON_TYPES.get(hints[pname], "string")}
        if p.default is p.empty:
            required.append(pname)
    return {"type": "function", "function": {"name": name, "description": doc,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": required}}}


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every tool call in ``text``, in order (Hermes JSON calls, then plain calls); malformed ones
    carry ``error``. No call at all: an empty list."""
    calls = [_parse_hermes(m.group(1)) for m in HERMES_RE.finditer(text)]
    calls += [_parse_plain(m.group(1)) for m in PLAIN_RE.finditer(text)]
    if UNCLOSED_RE.search(text):
        calls.append(ToolCall(error="a tool call was opened but not closed"))
    return calls


def _parse_hermes(body: str) -> ToolCall:
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError as exc:
        return ToolCall(error=f"the tool call is not valid JSON ({exc.msg} at character {exc.pos})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(error='a tool call must be a JSON object {"name": ..., "arguments": {...}}')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ToolCall(name=obj["name"], error="the tool call's arguments are not a JSON object")
    if not isinstance(args, dict):
        return ToolCall(name=obj["name"], error="the tool call's arguments are not a JSON object")
    return ToolCall(name=obj["name"], arguments=args)


def _parse_plain(body: str) -> ToolCall:
    try:
        node = ast.parse(body.strip(), mode="eval").body
    except SyntaxError:
        return ToolCall(error="the tool call must look like name(arg, key=value)")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return ToolCall(error="the tool call must look like name(arg, key=value)")
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ToolCall(name=node.func.id, error="tool arguments must be literals (numbers, strings, lists)")
    if len(kwargs) != len(node.keywords):
        return ToolCall(name=node.func.id, error="tool arguments must be literals (numbers, strings, lists)")
    return ToolCall(name=node.func.id, arguments={"__positional__": args, **kwargs} if args else kwargs)


def bind(call: ToolCall, tools: dict) -> tuple[typing.Callable, dict] | str:
    """``(function, keyword arguments)`` of a parsed call, or the error text for the model."""
    if call.error:
        return call.error
    if call.name not in tools:
        return f"unknown tool {call.name!r}; the tools are: {', '.join(sorted(tools))}"
    fn, args = tools[call.name], dict(call.arguments)
    positional = args.pop("__positional__", [])
    try:
        bound = inspect.signature(fn).bind(*positional, **args)
    except TypeError as exc:
        return f"wrong arguments for {call.name}: {exc}"
    return fn, dict(bound.arguments)


def cut_middle(text: str, keep: int, unit: str = "characters") -> str:
    """``text`` with its middle replaced by a note when longer than ``keep`` characters."""
    if len(text) <= keep:
        return text
    head, tail = keep // 2, keep - keep // 2
    return f"{text[:head]}\n[... {len(text) - keep} {unit} cut from the middle ...]\n{text[len(text) - tail:]}"


class _CappedIO(io.TextIOBase):
    """A text sink that keeps the first and last ``cap // 2`` characters written to it."""

    def __init__(self, cap: int):
        self.cap, self.half, self.head, self.tail, self.total = cap, cap // 2, "", "", 0

    def write(self, s: str) -> int:
        self.total += len(s)
        if len(self.head) < self.half:
            self.head += s[: self.half - len(self.head)]
        self.tail = (self.tail + s)[-(self.cap - self.half):]
        return len(s)

    def text(self) -> str:
        if self.total <= self.cap:  # all of it: the head, then the rest from the tail
            return self.head + self.tail[len(self.tail) - (self.total - len(self.head)):]
        return f"{self.head}\n[... {self.total - self.cap} characters cut from the middle ...]\n{self.tail}"


def _child(conn, fn, kwargs, max_chars: int) -> None:
    """In the forked process: run the call with stdout/stderr captured (capped), send back the text."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # output written below Python (C extensions, os.write) goes nowhere
    os.dup2(devnull, 2)
    out = _CappedIO(max_chars)
    sys.stdout = sys.stderr = out
    try:
        result = fn(**kwargs)
        printed = out.text()
        text = printed + ("" if result is None else str(result))
        ok = True
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is a message to the model
        text, ok = f"{type(exc).__name__}: {exc}", False
    conn.send((ok, cut_middle(text, max_chars)))
    conn.close()


def run_tool(fn, kwargs: dict, *, timeout_s: float, max_chars: int) -> tuple[bool, str]:
    """Run one tool call in a forked child process: ``(ok, text)``.

    The child prints into a capped buffer; its return value (``str()``-ed) follows what it printed;
    the text is at most ``max_chars`` characters (middle cut, said in the text). A call past
    ``timeout_s`` is killed (``"the tool call timed out after ..."``), an exception becomes
    ``"<Type>: <message>"``. Being a forked copy, the tool's changes to its object do not survive
    the call: keep an episode's state in ``step``, not in tools.
    """
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, kwargs, max_chars), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout_s):
            try:
                return recv.recv()
            except EOFError:
                pass
            proc.join(timeout_s)
            return False, f"the tool process exited with code {proc.exitcode} without a result"
        return False, f"the tool call timed out after {timeout_s:g} s and was stopped"
    finally:
        recv.close()
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
