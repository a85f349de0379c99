"""Record formats: one record's fields become a :class:`Conversation` (chat turns) or a :class:`Text` (raw text).

Keeping the record-to-conversation step apart from rendering (:mod:`sftjax.data.templates`) is what lets the same
facts be shown to the model in several ways, the subject of the data-composition studies: a knowledge record
(question, answer, statement) can become direct QA, a fill-in-the-blank or a statement completion, and each of those
can be rendered with any chat template, while the loss mask is computed once, by the renderer, from the turn roles.

The source reader has already renamed its columns to the canonical field names used here; this module only checks
types and builds turns. Errors are :class:`~sftjax.config.ConfigError` naming the field and the format, plus the
record (``where``) when the caller passes it, because a bad record deep in a large file must be findable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from sftjax.config import ConfigError

BLANK = "____"
FILL_PROMPT = "Fill in the blank: "
COMPLETE_PROMPT = "Complete the statement: "


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"; the renderer trains on assistant turns only
    content: str

    def __post_init__(self):
        if self.role not in ("user", "assistant"):
            raise ValueError(f"Turn.role must be 'user' or 'assistant', got {self.role!r}")


@dataclass
class Conversation:
    """Chat turns plus the system prompt.

    ``system=None`` means "the template's default", which for some templates (SmolLM2's, vicuna) is a non-empty
    prompt; ``no_system=True`` asks the renderer to emit no system prompt at all, not even that default, which is
    what distinguishes ``completion_no_system`` from ``completion``. An explicit ``system`` and ``no_system`` would
    contradict each other, so that combination is refused.
    """

    turns: list[Turn] = field(default_factory=list)
    system: Optional[str] = None
    no_system: bool = False

    def __post_init__(self):
        if self.no_system and self.system is not None:
            raise ValueError("Conversation: no_system=True contradicts an explicit system prompt")


@dataclass(frozen=True)
class Text:
    """Raw text, trained on every token (continued pre-training style data)."""

    text: str


Example = Union[Conversation, Text]


def _at(fmt: str, where: str) -> str:
    return f"format '{fmt}'" + (f" ({where})" if where else "")


def _field(rec: Mapping[str, Any], name: str, fmt: str, where: str, optional: bool = False) -> Optional[str]:
    """A string field. A missing optional field and an explicit null both read as None, since datasets exported from
    dataframes write null for an absent value (alpaca's empty ``input``)."""
    if name not in rec or rec[name] is None:
        if optional:
            return None
        raise ConfigError(f"{_at(fmt, where)}: missing field '{name}'; record has fields {sorted(rec)}")
    value = rec[name]
    if not isinstance(value, str):
        raise ConfigError(f"{_at(fmt, where)}: field '{name}' must be a string, got {type(value).__name__} "
                          f"{value!r:.80}")
    return value


def _alpaca(rec, fmt, where) -> Conversation:
    instruction = _field(rec, "instruction", fmt, where)
    extra = _field(rec, "input", fmt, where, optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return Conversation([Turn("user", prompt), Turn("assistant", _field(rec, "output", fmt, where))],
                        system=_field(rec, "system", fmt, where, optional=True))


# ShareGPT's speaker names; user/assistant appear in some exports of it too.
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def _messages(rec, fmt, where) -> Conversation:
    """OpenAI-style ``messages`` or ShareGPT ``conversations``. A system message is accepted only first: templates
    have one system slot, and moving a mid-conversation instruction there would change what the data says."""
    if "messages" in rec and rec["messages"] is not None:
        name, role_key, text_key, roles = "messages", "role", "content", _MESSAGE_ROLES
    elif "conversations" in rec and rec["conversations"] is not None:
        name, role_key, text_key, roles = "conversations", "from", "value", _SHAREGPT_ROLES
    else:
        raise ConfigError(f"{_at(fmt, where)}: missing field 'messages' (or ShareGPT 'conversations'); "
                          f"record has fields {sorted(rec)}")
    items = rec[name]
    if not isinstance(items, list):
        raise ConfigError(f"{_at(fmt, where)}: field '{name}' must be a list, got {type(items).__name__}")
    system, turns = None, []
    for i, item in enumerate(items):
        key = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{_at(fmt, where)}: field '{key}' must be an object with '{role_key}' and "
                              f"'{text_key}', got {type(item).__name__}")
        role = item.get(role_key)
        if role not in roles:
            raise ConfigError(f"{_at(fmt, where)}: field '{key}.{role_key}' must be one of {sorted(roles)}, "
                              f"got {role!r}")
        content = item.get(text_key)
        if not isinstance(content, str):
            raise ConfigError(f"{_at(fmt, where)}: field '{key}.{text_key}' must be a string, got "
                              f"{type(content).__name__}")
        if roles[role] == "system":
            if i != 0:
                raise ConfigError(f"{_at(fmt, where)}: field '{key}': a system message is only allowed first")
            system = content
        else:
            turns.append(Turn(roles[role], content))
    return Conversation(turns, system=system)


def _prompt_completion(rec, fmt, where) -> Conversation:
    return Conversation([Turn("user", _field(rec, "prompt", fmt, where)),
                         Turn("assistant", _field(rec, "completion", fmt, where))])


def _text(rec, fmt, where) -> Text:
    return Text(_field(rec, "text", fmt, where))


def _qa(rec, fmt, where) -> Conversation:
    return Conversation([Turn("user", _field(rec, "question", fmt, where)),
                         Turn("assistant", _field(rec, "answer", fmt, where))])


def _statement(rec, fmt, where) -> tuple[str, str, int]:
    """The statement, the answer and where the answer first occurs in it. The answer has to be there verbatim:
    both the blank and the completion split point are defined by it, and a paraphrased statement would train the
    model on a fact that the answer does not state."""
    statement, answer = _field(rec, "statement", fmt, where), _field(rec, "answer", fmt, where)
    at = statement.find(answer) if answer else -1
    if at < 0:
        raise ConfigError(f"{_at(fmt, where)}: field 'answer' ({answer!r:.80}) must be non-empty and occur verbatim "
                          f"in field 'statement' ({statement!r:.120})")
    return statement, answer, at


def _masking(rec, fmt, where) -> Conversation:
    # Every occurrence is blanked: leaving a second copy of the answer in the prompt would give it away.
    statement, answer, _ = _statement(rec, fmt, where)
    return Conversation([Turn("user", FILL_PROMPT + statement.replace(answer, BLANK)), Turn("assistant", answer)])


def _completion(rec, fmt, where, no_system: bool = False) -> Conversation:
    """Split at the first occurrence of the answer. The prompt's trailing whitespace is dropped (the space before
    the answer would otherwise end the user turn); an answer that opens the statement leaves the bare instruction
    as the prompt, which is common for facts of the form "<answer> is the ... of ..."."""
    statement, _, at = _statement(rec, fmt, where)
    return Conversation([Turn("user", (COMPLETE_PROMPT + statement[:at]).rstrip()),
                         Turn("assistant", statement[at:])], no_system=no_system)


def _completion_no_system(rec, fmt, where) -> Conversation:
    return _completion(rec, fmt, where, no_system=True)


_FORMATS: dict[str, Callable[[Mapping[str, Any], str, str], Example]] = {
    "alpaca": _alpaca,
    "messages": _messages,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "qa": _qa,
    "masking": _masking,
    "completion": _completion,
    "completion_no_system": _completion_no_system,
}
FORMATS = tuple(_FORMATS)


def check_format(fmt: str) -> None:
    """Fail on an unknown format name at config time, before any record is read."""
    if fmt not in _FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def to_example(record: Mapping[str, Any], fmt: str, where: str = "") -> Example:
    """Build the example for one record; ``where`` (e.g. "train.jsonl:17" or a record id) goes into every error."""
    check_format(fmt)
    if not isinstance(record, Mapping):
        raise ConfigError(f"{_at(fmt, where)}: a record must be an object of fields, got {type(record).__name__}")
    return _FORMATS[fmt](record, fmt, where)
