"""Chat templates: a Conversation or Text becomes token ids plus per-token ``trained`` flags.

``trained[i]`` means token i is a loss target (the packer uses ``loss_mask = trained[1:]``). A conversation trains on
each assistant turn's content, its end-of-turn token and whatever the template writes after it up to the next turn's
start (ChatML's "\\n" after ``<|im_end|>``, llama2's space before ``</s>``): ``auto`` only knows a turn's end as "where
the next turn starts", one rule then holds for every template, and the tail cannot hurt generation, which stops at
the end-of-turn token. ``train_on_prompt`` flags every token, BOS too, though the first token is never a target.

Masks must be exact, so renderers tokenize pieces separately and concatenate them: no token spans a prompt/answer
boundary. The price is that text is not merged across those boundaries as one string would be (byte-level BPE writes
"\\n\\n" as one token where a header's "\\n" meets content starting with "\\n"), which is also how inference sees
the prompt/answer boundary. A piece after the first is tokenized as the tokenizer tokenizes text right after a special
token, so a sentencepiece dummy prefix space appears exactly where a whole-string tokenization puts it (never for
non-legacy Llama tokenizers, after every special token for legacy ones).

A document may come back with no trained flag set (e.g. no assistant turn); callers drop and count it, since one odd
record should not stop a run.
"""

from __future__ import annotations

import dataclasses
import os
import weakref

from sftjax.config import ConfigError
from sftjax.data.formats import Conversation, Example, Text, Turn

TEMPLATES = ("auto", "chatml", "vicuna_v1.1", "llama2", "none")
# FastChat's vicuna_v1.1 system message, verbatim.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
# Meta's llama/generation.py.
B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
BOS = object()  # a renderer's BOS: text after it still counts as the document start
_SUA = _S, _U, _A = "\x01SFTJAX-SYSTEM\x01", "\x01SFTJAX-USER\x01", "\x01SFTJAX-ASSISTANT\x01"  # sentinels


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"unknown chat template {template!r}; valid templates: {', '.join(TEMPLATES)}")


class _Tok:
    """What the renderers need to know about a tokenizer, worked out once per tokenizer."""

    def __init__(self, tok):
        self._tok = weakref.ref(tok)  # the cache below is keyed by the tokenizer: a strong reference would pin it
        if tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no eos_token; documents can't end")
        self.eos_id, self.bos_id = tok.eos_token_id, tok.bos_token_id
        self.adds_bos = self.bos_id is not None and tok.encode("a")[:1] == [self.bos_id]
        self._chat_facts: tuple | None = None

    @property
    def tok(self):
        return self._tok()

    def encode(self, text: str, at_start: bool) -> list[int]:
        """Text at the document start is tokenized as the tokenizer tokenizes a document (dummy prefix and all);
        later text as it would be right after a special token (see the module docstring)."""
        if not text:
            return []
        if not at_start:
            ids = self.tok.encode(self.tok.eos_token + text, add_special_tokens=False)
            if ids[:1] == [self.eos_id]:
                return ids[1:]
        return self.tok.encode(text, add_special_tokens=False)

    def piece(self, token: str) -> int | str:
        """A template's special token as its id when the vocabulary has it, else as text (a base model's
        tokenizer without ChatML tokens then spells ``<|im_start|>`` in ordinary tokens)."""
        tid = self.tok.convert_tokens_to_ids(token)
        return tid if isinstance(tid, int) and (tid != self.tok.unk_token_id or token == self.tok.unk_token) else token

    # -- the tokenizer's own chat template ("auto") --

    def chat(self, messages: list[dict], gen: bool) -> str:
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja's raise_exception and template bugs alike
            raise ConfigError(f"template 'auto': the tokenizer's chat template failed on this conversation: {e}") from e

    def system_block(self) -> tuple[str, str] | None:
        """None when the template adds no system prompt of its own. Else (preamble, head): in a rendering with a
        sentinel system message, replacing the system turn ``head`` by ``preamble`` (what precedes that turn, e.g.
        Llama 3's ``<|begin_of_text|>``) leaves the conversation without any system prompt.

        A template injects a default when rendering without a system message gives the sentinel rendering with the
        sentinel swapped for other text. The system turn's header starts at the last occurrence, before the
        sentinel, of what the user and assistant headers start with ("<|im_start|>", "<|start_header_id|>")."""
        if self._chat_facts is None or self._chat_facts[0] != self.tok.chat_template:
            system, user, asst = ({"role": r, "content": c} for r, c in zip(("system", "user", "assistant"), _SUA))
            try:
                head, with_s, plain = (self.chat(m, False) for m in ([system], [system, user], [user]))
            except ConfigError:  # e.g. a template that refuses system messages cannot inject one either
                head = with_s = plain = ""
            before, _, after = with_s.partition(_S)
            block = None
            if _S in with_s and plain.startswith(before) and plain[len(before):].endswith(after):
                three = self.chat([system, user, asst], False)
                marker = os.path.commonprefix([three[len(head):three.find(_U)], three[len(with_s):three.find(_A)]])
                start = before.rfind(marker) if marker else -1
                if start < 0 or not with_s.startswith(head):
                    raise ConfigError("template 'auto': cannot locate the system prompt this chat template injects, "
                                      "so it cannot be suppressed (format 'completion_no_system'); use 'completion'")
                block = (head[:start], head)
            self._chat_facts = (self.tok.chat_template, block)
        return self._chat_facts[1]


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _facts(tok) -> _Tok:
    if tok not in _CACHE:
        _CACHE[tok] = _Tok(tok)
    return _CACHE[tok]


def _auto_text(tk: _Tok, conv: Conversation, k: int, gen: bool) -> str:
    msgs = [{"role": t.role, "content": t.content} for t in conv.turns[:k]]
    if conv.system is not None:
        return tk.chat([{"role": "system", "content": conv.system}] + msgs, gen)
    block = tk.system_block() if conv.no_system else None
    if block is None:
        return tk.chat(msgs, gen)
    text = tk.chat([{"role": "system", "content": _S}] + msgs, gen)
    if not text.startswith(block[1]):
        raise ConfigError("template 'auto': the chat template renders its system turn differently in this "
                          "conversation, so its default system prompt cannot be suppressed")
    return block[0] + text[len(block[1]):]


def _auto(tk: _Tok, conv: Conversation) -> list:
    """Render the whole conversation once; each assistant turn k spans from the end of turns[:k] rendered with the
    generation prompt to the end of turns[:k+1] rendered without it. Both must be prefixes of the whole rendering
    (compared as strings, so no token merge across the boundary can break it); templates that render history
    differently from the last turn (e.g. dropping earlier reasoning) fail here rather than mask the wrong tokens."""
    if not tk.tok.chat_template:
        raise ConfigError("template 'auto': this tokenizer has no chat template; pick a named template: "
                          + ", ".join(t for t in TEMPLATES if t != "auto"))
    full = _auto_text(tk, conv, len(conv.turns), False)
    parts, pos = [], 0
    for k, turn in enumerate(conv.turns):
        if turn.role != "assistant":
            continue
        head, upto = _auto_text(tk, conv, k, True), _auto_text(tk, conv, k + 1, False)
        if not (full.startswith(head) and full.startswith(upto) and pos <= len(head) <= len(upto)):
            raise ConfigError(f"template 'auto': the chat template does not render this conversation prefix-stably "
                              f"(turn {k}: the rendering up to it is not a prefix of the whole), so assistant turns "
                              f"cannot be located exactly; pick a named template: {', '.join(TEMPLATES[1:])}")
        parts += [(full[pos:len(head)], False), (full[len(head):len(upto)], True)]
        pos = len(upto)
    parts.append((full[pos:], False))
    return parts


def _chatml(tk: _Tok, conv: Conversation) -> list:
    start, end = tk.piece("<|im_start|>"), tk.piece("<|im_end|>")
    parts = [(BOS, False)] if tk.adds_bos else []
    if conv.system is not None:
        parts += [(start, False), (f"system\n{conv.system}", False), (end, False), ("\n", False)]
    for t in conv.turns:
        if t.role == "user":
            parts += [(start, False), (f"user\n{t.content}", False), (end, False), ("\n", False)]
        else:
            parts += [(start, False), ("assistant\n", False), (t.content, True), (end, True), ("\n", True)]
    return parts


def _vicuna(tk: _Tok, conv: Conversation) -> list:
    """FastChat's ADD_COLON_TWO style: "<system> USER: <u> ASSISTANT: <a></s>USER: ...". The space before the
    answer is trained: tokenizers fold it into the answer's first token ("▁Hello", "ĠHello")."""
    parts = [(BOS, False)] if tk.adds_bos else []
    system = None if conv.no_system else (VICUNA_SYSTEM if conv.system is None else conv.system)
    if system is not None:
        parts.append((system + " ", False))
    for t in conv.turns:
        if t.role == "user":
            parts.append((f"USER: {t.content} ", False))
        else:
            parts += [("ASSISTANT:", False), (f" {t.content}", True), (tk.eos_id, True)]
    return parts


def _llama2(tk: _Tok, conv: Conversation) -> list:
    """Meta's chat_completion: each user/assistant pair is "<s>[INST] <u> [/INST] <a> </s>", contents stripped,
    the system prompt folded into the first user message; it requires strictly alternating turns from the user."""
    roles = [t.role for t in conv.turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2):
        raise ConfigError(f"template 'llama2': turns must alternate user, assistant, ... starting with the user "
                          f"(Meta's format has no other shape), got roles {roles}")
    bos = [(BOS, False)] if tk.bos_id is not None else []
    parts = []
    for i in range(0, len(roles), 2):
        user = conv.turns[i].content
        if i == 0 and conv.system is not None:
            user = B_SYS + conv.system + E_SYS + user
        parts += bos + [(f"{B_INST} {user.strip()} {E_INST}", False)]
        if i + 1 < len(roles):
            parts += [(f" {conv.turns[i + 1].content.strip()} ", True), (tk.eos_id, True)]
    return parts


def _none(tk: _Tok, conv: Conversation) -> list:
    """Contents concatenated with nothing in between (a prompt carries its own separator), EOS after each answer."""
    parts = [(BOS, False)] if tk.adds_bos else []
    if conv.system is not None:
        parts.append((conv.system, False))
    for t in conv.turns:
        parts += [(t.content, False)] if t.role == "user" else [(t.content, True), (tk.eos_id, True)]
    return parts


_RENDERERS = {"auto": _auto, "chatml": _chatml, "vicuna_v1.1": _vicuna, "llama2": _llama2, "none": _none}


def render(example: Example, tokenizer, template: str, train_on_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids and per-token trained flags (same length) of one example.

    A Text is the tokenizer's own tokenization (BOS if it adds one) plus EOS, all trained, whatever the template.
    A conversation whose last assistant turn contains no EOS token (ChatML on a tokenizer whose EOS is not
    ``<|im_end|>``, or such an ``auto`` template) gets a trained EOS appended, so that every document ends in a
    trained EOS and a base model learns to stop.
    """
    check_template(template)
    tk = _facts(tokenizer)
    if isinstance(example, Text):
        ids = tokenizer.encode(example.text)
        ids = ids if ids[-1:] == [tk.eos_id] else ids + [tk.eos_id]
        return ids, [True] * len(ids)
    if not isinstance(example, Conversation):
        raise TypeError(f"render() takes a Conversation or Text, got {type(example).__name__}")
    ids, trained, answer_at, started = [], [], 0, False
    for value, flag in _merge(_RENDERERS[template](tk, example)):
        new = [tk.bos_id] if value is BOS else [value] if isinstance(value, int) else tk.encode(value, not started)
        started |= value is not BOS
        answer_at = len(ids) if flag and not (trained and trained[-1]) else answer_at  # the last trained run
        ids += new
        trained += [flag] * len(new)
    if example.turns and example.turns[-1].role == "assistant" and tk.eos_id not in ids[answer_at:]:
        ids.append(tk.eos_id)
        trained.append(True)
    return ids, [True] * len(ids) if train_on_prompt else trained


def _merge(parts: list) -> list:
    """Join adjacent same-flag texts: only special tokens and trained/untrained boundaries split tokenization."""
    out = []
    for value, flag in parts:
        if isinstance(value, str) and out and isinstance(out[-1][0], str) and out[-1][1] == flag:
            out[-1] = (out[-1][0] + value, flag)
        elif not (isinstance(value, str) and not value):
            out.append((value, flag))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Inference: the prompt side of the same rendering, the end-of-turn tokens, and the template as Jinja for exports


def clip_turns(example, tokenizer, template: str, limit: int):
    """Drop the turns of a very long conversation that lie wholly past ``limit`` tokens: they would be truncated
    away anyway, and locating assistant spans with the tokenizer's own template (``auto``) costs time quadratic in
    the number of turns (some chat logs have hundreds). Exact: the rendering of a prefix of the turns is a prefix of
    the whole rendering (``auto`` checks this), and the kept prefix is verified, by rendering it for real, to
    overflow the limit already; otherwise the conversation is kept whole."""
    if template != "auto" or not isinstance(example, Conversation) or len(example.turns) < 8:
        return example
    turns = example.turns
    if sum(len(t.content.encode()) for t in turns) + 16 * len(turns) <= limit:
        return example  # a token covers at least one byte: it cannot overflow
    tk = _facts(tokenizer)

    def estimate(k: int) -> int:  # the first k turns rendered as one text: close to the real rendering's length
        return len(tokenizer(_auto_text(tk, example, k, False), add_special_tokens=False)["input_ids"])

    target = limit + 64  # a margin over the estimate's error
    hi = 2
    while estimate(hi) <= target:
        if hi >= len(turns):
            return example
        hi = min(2 * hi, len(turns))
    lo = hi // 2 + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if estimate(mid) > target else (mid + 1, hi)
    clipped = dataclasses.replace(example, turns=turns[:lo])
    return clipped if len(render(clipped, tokenizer, template)[0]) > limit else example


def prompt_ids(tokenizer, template: str, messages) -> list[int]:
    """Token ids of a chat up to where the model's next answer starts, exactly as training rendered that prefix.

    ``messages``: OpenAI-style ``{"role", "content"}`` dicts, an optional leading ``system`` message, then user and
    assistant turns ending with a user turn. Every inference path (eval, sftjax-generate, serving) prompts here, so a
    model is always asked in the format it was trained on."""
    messages = list(messages)
    system = None
    if messages and messages[0].get("role") == "system":
        system, messages = messages[0]["content"], messages[1:]
    roles = [m.get("role") for m in messages]
    if not messages or roles[-1] != "user" or any(r not in ("user", "assistant") for r in roles):
        given = (["system"] if system is not None else []) + roles
        raise ConfigError(f"a chat prompt needs an optional system message, then user/assistant turns ending with a "
                          f"user turn; got roles {given}")
    turns = [Turn(m["role"], m["content"]) for m in messages] + [Turn("assistant", "")]
    ids, trained = render(Conversation(turns=turns, system=system), tokenizer, template)
    # the last answer is empty: its first trained token (the end of turn) is where generation takes over
    start = max(i for i in range(len(trained)) if trained[i] and (i == 0 or not trained[i - 1]))
    return list(ids[:start])


def end_of_turn_ids(tokenizer, extra=()) -> set[int]:
    """Tokens that end an answer: the tokenizer's EOS, ChatML's ``<|im_end|>`` when the vocabulary has it (it ends a
    turn even where eos_token is another token), and ``extra`` (e.g. the weights' generation_config EOS ids)."""
    ids = {tokenizer.eos_token_id, *extra}
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return {i for i in ids if i is not None}


def jinja_template(tokenizer, template: str) -> str | None:
    """``template`` as a Jinja chat template for ``tokenizer`` (what transformers' apply_chat_template runs), so an
    exported model is prompted as it was trained; None for ``auto`` (the tokenizer's own template already is).
    Written by hand: these are the named renderers above, restated in the format HF tokenizers carry."""
    check_template(template)
    if template == "auto":
        return None
    tk = _facts(tokenizer)
    bos = "{{ bos_token }}" if (tk.bos_id is not None if template == "llama2" else tk.adds_bos) else ""
    system = "{% set offset = 1 if messages and messages[0]['role'] == 'system' else 0 %}"
    if template == "chatml":
        return (bos + "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    if template == "vicuna_v1.1":
        return (bos + system + "{% if offset %}{{ messages[0]['content'] + ' ' }}{% else %}"
                + VICUNA_SYSTEM + " {% endif %}{% for m in messages[offset:] %}{% if m['role'] == 'user' %}"
                "USER: {{ m['content'] }} {% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}"
                "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    if template == "llama2":
        return (system + "{% for m in messages[offset:] %}{% if m['role'] == 'user' %}{% set content = "
                "m['content'] %}{% if loop.first and offset %}{% set content = '" + B_SYS.replace("\n", "\\n")
                + "' + messages[0]['content'] + '" + E_SYS.replace("\n", "\\n") + "' + content %}{% endif %}" + bos
                + B_INST + " {{ content.strip() }} " + E_INST + "{% else %} {{ m['content'].strip() }} "
                "{{ eos_token }}{% endif %}{% endfor %}")
    return (bos + "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
            "{% endif %}{% endfor %}")  # none
