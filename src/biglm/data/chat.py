"""Chat and instruction data: records -> message lists -> (prompt X, reply Y) pairs, with the chat template.

Two record layouts are read (``format: auto`` picks per record, so mixed sets work):

- **messages** (the Hugging Face chat datasets): ``{"messages": [{"role": "user", "content": "..."}, ...]}``
  with roles ``system`` (first only), ``user`` and ``assistant``;
- **FLAN-style** instruction data: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` and a
  ``system`` field optional), turned into ``[system?, user: instruction + "\\n\\n" + input, assistant: output]``.

A conversation becomes training pairs as BatGPT does (§3.2): the concatenated history up to an assistant
turn is the prompt X, that turn the target Y; by default only the last assistant turn is a target,
``all_turns`` makes every assistant turn one.

The prompt text is what the **chat template** renders with ``add_generation_prompt=True``: the template is
stored with the tokenizer (``tokenizer.chat_template``), so ``apply_chat_template`` on a saved or exported
tokenizer gives the ids the model was trained on (``BOS`` + the rendered prompt). Roles are plain words
(``User:`` / ``Assistant:``): no tokens are added to the vocabulary, so any tokenizer works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from biglm.errors import BiglmError

ROLES = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}System: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}\n"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""biglm's chat template: ``[BOS]System: ...\\nUser: ...\\nAssistant: reply[EOS]\\nUser: ...\\nAssistant:``.
The generation prompt ends at ``Assistant:``; the reply follows after one space (how ``target_space``
tokenises targets), and an assistant turn in the history ends with EOS (where a reply stops)."""

Message = dict[str, str]


@dataclass
class ChatFields:
    """Which record fields hold what."""

    messages: str = "messages"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system: str = "system"


def set_chat_template(tokenizer: Any, template: str | None = None) -> None:
    """Store ``template`` (default biglm's ``CHAT_TEMPLATE``) with ``tokenizer``; ``save_pretrained`` writes it."""
    tokenizer.chat_template = template or CHAT_TEMPLATE


def check_messages(messages: Any, where: str, need_reply: bool = True) -> list[Message]:
    """``messages`` checked: a list of ``{role, content}`` with known roles (``system`` first only), non-empty
    content, and (``need_reply``) an assistant turn last. One-line errors naming ``where`` and the turn."""
    if not isinstance(messages, list) or not messages:
        raise BiglmError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BiglmError(f"{where}: message {i} must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise BiglmError(f"{where}: message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if role == "system" and i > 0:
            raise BiglmError(f"{where}: message {i}: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise BiglmError(f"{where}: message {i} ({role}) has empty content")
        out.append({"role": role, "content": content.strip()})
    if need_reply and out[-1]["role"] != "assistant":
        raise BiglmError(f"{where}: the last message is {out[-1]['role']!r}; a training example ends with an "
                         "assistant reply")
    if not any(m["role"] == "user" for m in out):
        raise BiglmError(f"{where}: no user message")
    return out


def record_messages(fields: dict[str, Any], where: str, names: ChatFields, fmt: str = "auto",
                    system_prompt: str = "") -> list[Message]:
    """The conversation of one record (``fmt``: auto, messages or flan), checked; ``system_prompt`` is put
    first when the record has no system message of its own."""
    if fmt == "auto":
        fmt = "messages" if names.messages in fields else ("flan" if names.instruction in fields else "")
        if not fmt:
            keys = ", ".join(sorted(fields)) or "none"
            raise BiglmError(f"{where}: neither '{names.messages}' nor '{names.instruction}' (fields: {keys})")
    if fmt == "messages":
        if names.messages not in fields:
            raise BiglmError(f"{where}: missing field '{names.messages}'")
        messages = fields[names.messages]
    else:
        for name in (names.instruction, names.output):
            if not isinstance(fields.get(name), str):
                raise BiglmError(f"{where}: field '{name}' must be a string")
        user = fields[names.instruction].strip()
        extra = fields.get(names.input)
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra.strip()}" if user else extra.strip()
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": fields[names.output]}]
        if isinstance(fields.get(names.system), str) and fields[names.system].strip():
            messages.insert(0, {"role": "system", "content": fields[names.system]})
    messages = check_messages(messages, where)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The prompt text X for a reply after ``messages``: the template with the generation prompt, without the
    leading BOS (the engine and the task add BOS as a token)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    return text[len(bos):] if bos and text.startswith(bos) else text


def reply_text(tokenizer: Any, messages: Sequence[Message], i: int) -> str:
    """The target text of assistant turn ``i`` as the template writes it after the generation prompt
    (``' ' + content`` for biglm's template): what follows ``render_prompt(messages[:i])`` in the rendering
    of ``messages[:i+1]``, up to the end of the content."""
    prompt = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(messages[:i + 1]), tokenize=False)
    content = messages[i]["content"]
    if not full.startswith(prompt) or content not in full[len(prompt):]:
        raise BiglmError("the chat template does not render a reply right after its generation prompt; "
                         "a template must render messages[:i] + generation prompt as a prefix of messages[:i+1]")
    rest = full[len(prompt):]
    return rest[:rest.index(content) + len(content)]


def turn_pairs(messages: Sequence[Message], all_turns: bool) -> list[int]:
    """Indices of the assistant turns that are targets: the last one, or all (``all_turns``)."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    return turns if all_turns else turns[-1:]


def fit_history(tokenizer: Any, messages: Sequence[Message], budget: int) -> tuple[list[int], int, bool]:
    """Prompt ids (without BOS) for a reply after ``messages`` in at most ``budget`` tokens, how many earlier
    turns were dropped, and whether the ids were cut at all. The oldest user/assistant turns go first (a system
    message stays); if the last turn alone is still too long, its prompt keeps its last ``budget`` tokens."""
    messages = list(messages)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while True:
        ids = tokenizer(render_prompt(tokenizer, system + turns), add_special_tokens=False)["input_ids"]
        if len(ids) <= budget or len(turns) <= 1:
            break
        turns, dropped = turns[1:], dropped + 1
        while len(turns) > 1 and turns[0]["role"] == "assistant":  # start the kept history at a user turn
            turns, dropped = turns[1:], dropped + 1
    cut = dropped > 0 or len(ids) > budget
    if len(ids) > budget:
        ids = ids[len(ids) - budget:]
    return ids, dropped, cut


__all__ = ["CHAT_TEMPLATE", "ROLES", "ChatFields", "Message", "check_messages", "fit_history", "record_messages",
           "render_prompt", "reply_text", "set_chat_template", "turn_pairs"]
