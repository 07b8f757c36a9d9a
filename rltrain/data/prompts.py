"""Turning questions and preference pairs into the exact text the model sees."""
from __future__ import annotations

from typing import Any

from rltrain.data.preference import Messages, PreferencePair, Text


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(text: Text, role: str) -> Messages:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _plain(text: Text) -> str:
    return text if isinstance(text, str) else "\n\n".join(m["content"] for m in text)


def _with_system(messages: Messages, system_prompt: str | None) -> Messages:
    if system_prompt and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def render_prompt(
    tokenizer: Any,
    question: Text,
    *,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
) -> str:
    """The prompt string to tokenize and generate from.

    With a chat template (and ``use_chat_template``): the template applied to
    ``[system?, user: question]`` with ``add_generation_prompt=True``, so generation starts
    inside the assistant turn. Otherwise plain text: ``system_prompt``, a blank line, then
    the question. ``question`` may also be a list of chat messages.
    """
    if use_chat_template and has_chat_template(tokenizer):
        messages = _with_system(_messages(question, "user"), system_prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = _plain(question)
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def render_pair(
    tokenizer: Any,
    pair: PreferencePair,
    *,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` texts; prompt + chosen is the full chosen sequence.

    With a chat template the responses are what the template adds after the generation
    prompt (the assistant text plus its end-of-turn tokens), so DPO scores exactly the tokens
    the policy would generate.

    Raises:
        ValueError: the template does not render the prompt as a prefix of the conversation
            (some templates rewrite earlier turns); use ``use_chat_template=False`` then.
    """
    prompt = render_prompt(tokenizer, pair.prompt, system_prompt=system_prompt,
                           use_chat_template=use_chat_template)
    if not (use_chat_template and has_chat_template(tokenizer)):
        return prompt, _plain(pair.chosen), _plain(pair.rejected)
    prompt_messages = _with_system(_messages(pair.prompt, "user"), system_prompt)
    responses = []
    for response in (pair.chosen, pair.rejected):
        full = tokenizer.apply_chat_template(
            prompt_messages + _messages(response, "assistant"), tokenize=False
        )
        if not full.startswith(prompt):
            raise ValueError(
                f"pair {pair.id!r}: the chat template does not render the prompt as a prefix of "
                "the full conversation; set use_chat_template=false for this model"
            )
        responses.append(full[len(prompt):])
    return prompt, responses[0], responses[1]
