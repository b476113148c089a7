"""Records in, token batches out.

Turns (prompt messages, response text) conversations (records.py reads them, formats.py
makes them from each record format) into tokens with the model's chat template (or prompt + response +
EOS), marks the positions whose logits predict a response token, and packs rows into
length-sorted, token-budget batches so no work is spent on padding.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ntk_selector.config import DataConfig
from ntk_selector.errors import DataError, UserError
from ntk_selector.io.formats import Conversation
from ntk_selector.io.records import Records

IGNORE_INDEX = -100
# Which tokens carry the objectives and the loss; stored in every definition, so a store or adapter
# made under an earlier rule (everything after the prompt's rendering) is never reused.
RESPONSE_TOKENS = "content+end-of-turn"
# How a row longer than max_length is cut (see fit_to_length); stored in every definition for the same reason.
TRUNCATION = "prompt-middle, response kept"


# ----------------------------------------------------------------------------- tokenizing


@dataclass
class Encoded:
    """Token ids of one example and where its response starts (ids[response_start:] carry the loss)."""

    input_ids: np.ndarray  # int64 [length]
    response_start: int
    prompt_cut: int = 0  # prompt tokens dropped (from its middle) to fit max_length
    response_cut: int = (
        0  # response tokens dropped (from its end): only when the response alone nearly fills max_length
    )

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_response_tokens(self) -> int:
        return max(0, self.length - self.response_start)


def uses_chat_template(tokenizer: Any, cfg: DataConfig) -> bool:
    return not cfg.no_chat_template and bool(getattr(tokenizer, "chat_template", None))


# Stands in for the assistant's content when locating the template's text around it.
_CONTENT_MARK = "\ue000content\ue001"


def _assistant_turn_parts(
    tokenizer: Any, conv: Conversation, prompt: str, known: dict[tuple[str, ...], tuple[str, str]]
) -> tuple[str, str, str]:
    """(text the template puts before the content, the content as rendered, text after it) of the response turn.

    The template's own text around the content (Qwen3's empty ``<think></think>`` block before it,
    ``<|im_end|>\n`` after it) is found by rendering the turn with a marker as its content, so no
    search for the content's characters can land inside the template's tokens. The marker rendering
    is kept in ``known`` per sequence of prompt roles and reused when this row's rendering starts and
    ends with the same text; otherwise the row gets its own.
    """

    def render(content: str) -> str:
        full = tokenizer.apply_chat_template(
            conv.prompt_messages + [{"role": "assistant", "content": content}], tokenize=False
        )
        if not full.startswith(prompt):
            raise DataError(
                "the chat template does not render the prompt as a prefix of the conversation; use --no-chat-template"
            )
        return full[len(prompt) :]

    def fits(tail: str, before: str, after: str) -> bool:
        return tail.startswith(before) and tail.endswith(after) and len(tail) >= len(before) + len(after)

    def marked_parts() -> tuple[str, str]:
        marked = render(_CONTENT_MARK)
        if marked.count(_CONTENT_MARK) != 1:
            raise DataError("the chat template does not render the assistant content once; use --no-chat-template")
        before, after = marked.split(_CONTENT_MARK)
        return before, after

    roles = tuple(m["role"] for m in conv.prompt_messages)
    tail = render(conv.response)
    parts = known.get(roles)
    if parts is None or not fits(tail, *parts):
        parts = marked_parts()
        if not fits(tail, *parts):
            raise DataError(
                "the chat template renders the assistant turn in a way that cannot be split into "
                "its content and end-of-turn; use --no-chat-template"
            )
        known.setdefault(roles, parts)
    before, after = parts
    return before, tail[len(before) : len(tail) - len(after)], after


def _end_of_turn(tokenizer: Any, after_ids: Sequence[int]) -> list[int]:
    """The tokens that close the response: those after the content up to and including the first special
    token (``<|im_end|>``), not the template's tail after it; EOS when the template adds nothing."""
    special = set(tokenizer.all_special_ids)
    for j, t in enumerate(after_ids):
        if t in special:
            return list(after_ids[: j + 1])
    if after_ids:
        return list(after_ids)
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def encode(conversations: Sequence[Conversation], tokenizer: Any, cfg: DataConfig) -> list[Encoded]:
    """Tokenize many conversations at once (fast tokenizers batch well); truncate to max_length.

    The response tokens (those carrying the NTK objective, the CE objective and the training loss)
    are the assistant content plus the one end-of-turn token that closes it. Under a chat template
    whatever the template renders before the content (an empty reasoning block) joins the prompt,
    and what it renders after the end-of-turn token (SmolLM2's ``\n``) is left out.
    """
    if uses_chat_template(tokenizer, cfg):
        prompt_texts, response_texts, after_texts = [], [], []
        known: dict[tuple[str, ...], tuple[str, str]] = {}
        for conv in conversations:
            prompt = tokenizer.apply_chat_template(conv.prompt_messages, tokenize=False, add_generation_prompt=True)
            before, content, after = _assistant_turn_parts(tokenizer, conv, prompt, known)
            prompt_texts.append(prompt + before)
            response_texts.append(content)
            after_texts.append(after)
        prompt_ids = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
        content_ids = tokenizer(response_texts, add_special_tokens=False)["input_ids"]
        after_ids = tokenizer(after_texts, add_special_tokens=False)["input_ids"]
        response_ids = [list(c) + _end_of_turn(tokenizer, a) for c, a in zip(content_ids, after_ids, strict=True)]
    else:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError("the tokenizer has no EOS token; use a chat template or set tokenizer.eos_token")
        prompt_ids = tokenizer(
            [
                c.prompt_messages[-1]["content"]
                if len(c.prompt_messages) == 1
                else "\n".join(m["content"] for m in c.prompt_messages)
                for c in conversations
            ],
            add_special_tokens=True,
        )["input_ids"]
        response_ids = [
            ids + [eos] for ids in tokenizer([c.response for c in conversations], add_special_tokens=False)["input_ids"]
        ]
    out = []
    for conv, p, r in zip(conversations, prompt_ids, response_ids, strict=True):
        fp, fr = fit_to_length(list(p), list(r), cfg.max_length)
        ids = np.asarray(fp + fr, dtype=np.int64)
        # An empty response text carries no information: no response tokens, never selected.
        start = len(ids) if not conv.response.strip() else len(fp)
        out.append(Encoded(ids, start, prompt_cut=len(p) - len(fp), response_cut=len(r) - len(fr)))
    return out


def fit_to_length(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Prompt and response ids cut to ``max_length`` tokens together, the response kept whole.

    Why: a long answer (a summary, a conclusion) is what a generative fine-tune learns from; cutting
    its end would train and score a different answer. The prompt loses tokens from its middle (its
    start, the instructions and the template's header, and its end, the question and the assistant
    header, stay), down to a floor of ``max_length // 4`` tokens; only a response longer than the rest
    loses tokens from its end. The NTK features, the training loss and ``evaluate`` all use this rule.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep = max(max_length - len(response), min(len(prompt), max_length // 4))
    tail = keep // 2
    prompt = prompt[: keep - tail] + (prompt[len(prompt) - tail :] if tail else [])
    return prompt, response[: max_length - keep]


# ----------------------------------------------------------------------------- batching


# Fixed cost of one model call, in padded tokens: per-batch Python, hook and kernel-launch
# overhead. It keeps the planner from splitting into many tiny batches to save a few pad tokens.
BATCH_OVERHEAD_TOKENS = 32


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
    """Index batches of length-sorted rows (longest first) with the least padded work.

    Rows are sorted by length and cut into contiguous groups with rows x longest <= token_budget
    (a row longer than the budget goes alone) and at most max_batch_size rows. Among all such
    cuts, dynamic programming picks the one minimising padded tokens + BATCH_OVERHEAD_TOKENS per
    batch, so rows of very different lengths are not padded to each other: on a mixed-length set,
    work done on padding is what makes a batched pass slower than a batch-of-one loop.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sorted_len = np.asarray([lengths[i] for i in order], dtype=np.int64)
    n = len(order)
    best = np.zeros(n + 1, dtype=np.float64)  # best[j]: least cost of the first j sorted rows
    cut = np.zeros(n + 1, dtype=np.int64)  # cut[j]: start of the last batch in that best plan
    for j in range(1, n + 1):
        lo = max(0, j - max_batch_size)
        starts = np.arange(lo, j)
        rows = j - starts
        longest = sorted_len[starts]  # sorted descending, so the first row of a batch is its longest
        ok = (rows * longest <= token_budget) | (rows == 1)
        cost = best[starts] + rows * longest + BATCH_OVERHEAD_TOKENS
        cost[~ok] = np.inf
        k = int(np.argmin(cost))  # ties go to the earliest start: fewer, larger batches
        best[j] = cost[k]
        cut[j] = starts[k]
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = int(cut[j])
    return batches[::-1]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    target_mask: torch.Tensor  # [B, T] bool: logits at t predict a response token (t+1 in response)
    labels: torch.Tensor  # [B, T] next-token targets at t (IGNORE_INDEX off the response)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.target_mask, self.labels)))


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-padded batch; padding never attends into real tokens and carries no target."""
    T = max(e.length for e in items)
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    target = torch.zeros((B, T), dtype=torch.bool)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(items):
        n = e.length
        t = torch.from_numpy(e.input_ids)
        ids[b, :n] = t
        attn[b, :n] = 1
        s = max(e.response_start, 1)
        if s < n:
            target[b, s - 1 : n - 1] = True
            labels[b, s - 1 : n - 1] = t[s:n]
    return Batch(ids, attn, target, labels)


def data_definition(records: Records, data_cfg: DataConfig) -> dict[str, Any]:
    """What of the data determines a stage's numbers. The record format is named only when it is not
    prompt/response (the one format before formats existed), so warm-ups and stores written then
    still resume."""
    definition = {
        "data_fingerprint": records.fingerprint,
        "data_rows": len(records),
        "max_length": data_cfg.max_length,
        "chat_template": not data_cfg.no_chat_template,
        "prompt_field": data_cfg.prompt_field,
        "response_field": data_cfg.response_field,
        "messages_field": data_cfg.messages_field,
        "response_tokens": RESPONSE_TOKENS,
        "truncation": TRUNCATION,
    }
    if records.format != "prompt-response":
        definition["format"] = records.format
    return definition


def check_response_tokens(data: list[Records], tokenizer: Any, data_cfg: DataConfig, warn: bool = True) -> int:
    """Before any model work: warn (on stderr) about rows whose response is cut by --max-length (only a
    response longer than about 3/4 of it is: prompts are shortened first), and refuse when no row has a
    response token left. Returns the usable rows."""
    return _check(data, tokenizer, data_cfg, warn, keep=False)[0]


def encode_checked(data: list[Records], tokenizer: Any, data_cfg: DataConfig, warn: bool = True) -> list[list[Encoded]]:
    """``check_response_tokens``, keeping every file's encodings for the work that follows, so a stage
    tokenizes each row once (the check and the run share one encoding)."""
    return _check(data, tokenizer, data_cfg, warn, keep=True)[1]


def _check(
    data: list[Records], tokenizer: Any, data_cfg: DataConfig, warn: bool, keep: bool
) -> tuple[int, list[list[Encoded]]]:
    usable = 0
    kept: list[list[Encoded]] = []
    for records in data:
        encoded = encode(records.conversations, tokenizer, data_cfg)
        lost = [
            i
            for i, (e, c) in enumerate(zip(encoded, records.conversations, strict=True))
            if e.n_response_tokens == 0 and c.response.strip()
        ]
        cut = [i for i, e in enumerate(encoded) if e.response_cut and e.n_response_tokens]
        usable += sum(e.n_response_tokens > 0 for e in encoded)
        if lost and warn:
            print(
                f"WARNING: {len(lost)} of {len(records)} rows of {records.path} lose their whole response to "
                f"--max-length {data_cfg.max_length} (first at line {records.line(lost[0])}) and are skipped; "
                f"raise --max-length to keep them",
                file=sys.stderr,
                flush=True,
            )
        if cut and warn:
            print(
                f"WARNING: {len(cut)} of {len(records)} rows of {records.path} have responses longer than "
                f"--max-length {data_cfg.max_length} leaves them (first at line {records.line(cut[0])}): their "
                f"ends are cut; raise --max-length to keep them whole",
                file=sys.stderr,
                flush=True,
            )
        if keep:
            kept.append(encoded)
    if usable == 0:
        names = ", ".join(str(r.path) for r in data)
        raise UserError(
            f"{names}: no example has response tokens left (empty responses, or all truncated away at "
            f"--max-length {data_cfg.max_length}); raise --max-length"
        )
    return usable, kept


def encode_rows(
    conversations: Sequence[Conversation],
    start: int,
    stop: int,
    tokenizer: Any,
    data_cfg: DataConfig,
    known: Sequence[Encoded] = (),
) -> list[Encoded]:
    """Encodings of rows ``start:stop``; ``known`` holds the encodings of rows ``0:len(known)`` made earlier
    in the same stage, which are reused instead of tokenizing those rows again."""
    head = list(known[start:stop]) if start < len(known) else []
    rest = start + len(head)
    return head + (encode(conversations[rest:stop], tokenizer, data_cfg) if rest < stop else [])
