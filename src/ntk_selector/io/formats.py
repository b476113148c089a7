"""Record formats: which fields hold the prompt and the response, found per file or named.

- ``prompt-response``: string fields (``--prompt-field`` / ``--response-field``).
- ``prompt-completion``: TRL's rows, plain (two strings) or conversational (two chat lists;
  the completion's last assistant turn is the response, turns before it join the prompt).
- ``messages``: an OpenAI / TRL chat list of {role, content}; the last assistant turn is the response.
- ``sharegpt``: ``conversations`` of {from, value} (human / gpt / system speakers).
- ``alpaca``: ``instruction`` + ``input`` (joined by a blank line when not empty) and ``output``.

Each converter takes one record (a dict) and returns a ``Conversation`` or raises ``RecordError``
with what is wrong; the caller adds the file and line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ntk_selector.config import DataConfig
from ntk_selector.errors import DataError

FORMATS = ("prompt-response", "prompt-completion", "messages", "sharegpt", "alpaca")
SHAREGPT_FIELD = "conversations"
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class Conversation:
    """A record reduced to what the model sees: prompt turns and the response that carries the loss."""

    prompt_messages: list[dict[str, str]]
    response: str


def conversation_text(conv: Conversation) -> str:
    """The conversation as plain text: the prompt turns' contents, then the response, one per line.
    The MiniLM embedder reads it (so its embeddings, stored per row, depend on it: keep it byte for byte)
    and the test-set overlap filter takes its whitespace-separated n-grams."""
    return "\n".join([m["content"] for m in conv.prompt_messages] + [conv.response])


class RecordError(ValueError):
    """What is wrong with one record (without the file and line, which the reader knows)."""


def _text(text: str, name: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate from a JSON escape such as \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(
            f"field '{name}' holds a lone surrogate ({text[e.start]!r} at character {e.start}), "
            f"not valid Unicode text; fix or drop the record"
        ) from None
    return text


def _string(record: dict[str, Any], name: str) -> str:
    if record.get(name) is None:
        raise RecordError(f"missing field '{name}'")
    if not isinstance(record[name], str):
        raise RecordError(f"field '{name}' must be a string, got {type(record[name]).__name__}")
    return _text(record[name], name)


def _chat(
    value: Any, name: str, role_key: str = "role", content_key: str = "content", roles: dict[str, str] | None = None
) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise RecordError(f"field '{name}' must be a list of {{{role_key}, {content_key}}} objects")
    out = []
    for m in value:
        role, content = m.get(role_key), m.get(content_key)
        if not isinstance(role, str) or not isinstance(content, str):
            raise RecordError(f"field '{name}': each message needs string '{role_key}' and '{content_key}'")
        if roles is not None:
            if role.lower() not in roles:
                raise RecordError(f"field '{name}': unknown speaker '{role}' (known: {', '.join(sorted(roles))})")
            role = roles[role.lower()]
        out.append({"role": role, "content": _text(content, name)})
    return out


def _split_last_assistant(msgs: list[dict[str, str]], name: str, allow_empty_prompt: bool = False) -> Conversation:
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise RecordError(f"field '{name}' has no assistant turn to use as the response")
    if last == 0 and not allow_empty_prompt:
        raise RecordError(
            f"field '{name}' starts with the assistant turn: the response needs a user (or system) "
            f"turn before it; add one or drop the record"
        )
    return Conversation(msgs[:last], msgs[last]["content"])


def from_prompt_response(record: dict[str, Any], cfg: DataConfig) -> Conversation:
    prompt, response = _string(record, cfg.prompt_field), _string(record, cfg.response_field)
    return Conversation([{"role": "user", "content": prompt}], response)


def from_prompt_completion(record: dict[str, Any], cfg: DataConfig) -> Conversation:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str):
        prompt_msgs = [{"role": "user", "content": prompt}]
    elif prompt is None:
        raise RecordError("missing field 'prompt'")
    else:
        prompt_msgs = _chat(prompt, "prompt")
    if isinstance(completion, str):
        return Conversation(prompt_msgs, completion)
    if completion is None:
        raise RecordError("missing field 'completion'")
    done = _split_last_assistant(_chat(completion, "completion"), "completion", allow_empty_prompt=True)
    return Conversation(prompt_msgs + done.prompt_messages, done.response)


def from_messages(record: dict[str, Any], cfg: DataConfig) -> Conversation:
    if record.get(cfg.messages_field) is None:
        raise RecordError(f"missing field '{cfg.messages_field}'")
    return _split_last_assistant(_chat(record[cfg.messages_field], cfg.messages_field), cfg.messages_field)


def from_sharegpt(record: dict[str, Any], cfg: DataConfig) -> Conversation:
    if record.get(SHAREGPT_FIELD) is None:
        raise RecordError(f"missing field '{SHAREGPT_FIELD}'")
    msgs = _chat(record[SHAREGPT_FIELD], SHAREGPT_FIELD, "from", "value", SHAREGPT_ROLES)
    return _split_last_assistant(msgs, SHAREGPT_FIELD)


def from_alpaca(record: dict[str, Any], cfg: DataConfig) -> Conversation:
    instruction, output = _string(record, "instruction"), _string(record, "output")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError(f"field 'input' must be a string, got {type(extra).__name__}")
    if extra:
        _text(extra, "input")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return Conversation([{"role": "user", "content": prompt}], output)


CONVERTERS: dict[str, Callable[[dict[str, Any], DataConfig], Conversation]] = {
    "prompt-response": from_prompt_response,
    "prompt-completion": from_prompt_completion,
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
}


def format_fields(fmt: str, cfg: DataConfig) -> list[str]:
    """The fields a format reads (the reader loads only these columns)."""
    return {
        "prompt-response": [cfg.prompt_field, cfg.response_field],
        "prompt-completion": ["prompt", "completion"],
        "messages": [cfg.messages_field],
        "sharegpt": [SHAREGPT_FIELD],
        "alpaca": ["instruction", "input", "output"],
    }[fmt]


def matching_formats(fields: Iterable[str], cfg: DataConfig) -> list[str]:
    """Formats whose identifying fields are all present."""
    have = set(fields)
    found = []
    if cfg.messages_field in have:
        found.append("messages")
    if SHAREGPT_FIELD in have:
        found.append("sharegpt")
    if {"prompt", "completion"} <= have:
        found.append("prompt-completion")
    if {"instruction", "output"} <= have:
        found.append("alpaca")
    same_as_completion = (cfg.prompt_field, cfg.response_field) == ("prompt", "completion")
    if {cfg.prompt_field, cfg.response_field} <= have and not same_as_completion:
        found.append("prompt-response")
    return found


def resolve_format(fields: Iterable[str], cfg: DataConfig, where: str) -> str:
    """The format named by ``--format``, or the one the fields identify; several is an error."""
    fields = list(fields)
    if cfg.format != "auto":
        if cfg.format not in FORMATS:
            raise DataError(f"unknown --format '{cfg.format}' (choose from auto, {', '.join(FORMATS)})")
        return cfg.format
    found = matching_formats(fields, cfg)
    if len(found) > 1:
        raise DataError(
            f"{where}: the fields ({', '.join(fields)}) fit several record formats ({', '.join(found)}); "
            f"name one with --format"
        )
    # nothing recognised: read prompt/response so each record's error names the missing field
    return found[0] if found else "prompt-response"


def to_conversation(
    record: dict[str, Any], cfg: DataConfig, path: Any = "<records>", fmt: str | None = None, line: Any = None
) -> Conversation:
    """One record as a conversation; errors name ``path:line`` (``path`` alone without a line). The
    format is found from this record's fields unless given."""
    where = f"{path}:{line}" if line is not None else str(path)
    fmt = fmt or resolve_format(record.keys(), cfg, where)
    try:
        return CONVERTERS[fmt](record, cfg)
    except RecordError as e:
        raise DataError(f"{where}: {e}") from None


OUTPUT_FORMATS = ("records", "prompt-completion", "messages")
OUTPUT_FILES = {"prompt-completion": "selected_prompt_completion.jsonl", "messages": "selected_messages.jsonl"}


def to_trl_row(conv: Conversation, kind: str) -> dict[str, Any]:
    """A conversation as a TRL training row: conversational prompt-completion, or one messages list."""
    answer = {"role": "assistant", "content": conv.response}
    if kind == "prompt-completion":
        return {"prompt": [dict(m) for m in conv.prompt_messages], "completion": [answer]}
    if kind == "messages":
        return {"messages": [dict(m) for m in conv.prompt_messages] + [answer]}
    raise ValueError(f"unknown output format '{kind}' (choose from {', '.join(OUTPUT_FORMATS)})")
