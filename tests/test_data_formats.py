"""Record formats and chat templates: literal renderings, exact masks, and errors that name what is wrong."""

import string

import pytest

from sftjax.config import ConfigError
from sftjax.data.formats import FORMATS, Conversation, Text, Turn, to_example
from sftjax.data.templates import TEMPLATES, VICUNA_SYSTEM, render
from tests.hf_fixtures import smollm2_tokenizer, tiny_tokenizer

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def _fast(model, pre_tokenizer, decoder):
    """BOS-adding tokenizer with Llama's specials (and ChatML's) and no chat template."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(model)
    t.pre_tokenizer, t.decoder = pre_tokenizer, decoder
    t.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>")


def make_byte_tok():
    """One token per byte: decoding any subset of ids is exact, so masks can be read back as text."""
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({c: len(SPECIALS) + i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    return _fast(models.BPE(vocab, []), pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())


@pytest.fixture(scope="module")
def byte_tok():
    return make_byte_tok()


@pytest.fixture(scope="module")
def spm_tok():
    """Sentencepiece-style (Metaspace, dummy prefix on the first word only, as non-legacy Llama tokenizers)."""
    from tokenizers import decoders, models, pre_tokenizers

    chars = "▁\n" + string.ascii_letters + string.digits + string.punctuation
    vocab = {s: i for i, s in enumerate(SPECIALS + list(chars))}
    return _fast(models.BPE(vocab, []), pre_tokenizers.Metaspace(prepend_scheme="first"),
                 decoders.Metaspace(prepend_scheme="first"))


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_tokenizer()


def conv(*contents, system=None, no_system=False):
    return Conversation([Turn("user" if i % 2 == 0 else "assistant", c) for i, c in enumerate(contents)],
                        system=system, no_system=no_system)


def rendered(tok, example, template, **kw):
    """(whole text, text of the trained tokens only) of a rendering."""
    ids, trained = render(example, tok, template, **kw)
    assert len(ids) == len(trained)
    return tok.decode(ids), tok.decode([i for i, t in zip(ids, trained) if t])


# ---------------------------------------------------------------- formats


def test_alpaca():
    ex = to_example({"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "Be brief."}, "alpaca")
    assert ex == Conversation([Turn("user", "Add.\n\n2 and 3"), Turn("assistant", "5")], system="Be brief.")
    for extra in ({}, {"input": ""}, {"input": None}):
        ex = to_example({"instruction": "Add.", "output": "5", **extra}, "alpaca")
        assert ex.turns[0] == Turn("user", "Add.") and ex.system is None


def test_messages_and_sharegpt():
    want = Conversation([Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"), Turn("assistant", "d")],
                        system="S")
    roles = [("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    assert to_example({"messages": [{"role": r, "content": c} for r, c in roles]}, "messages") == want
    for names in (("system", "human", "gpt"), ("system", "user", "assistant")):
        mapping = dict(zip(("system", "user", "assistant"), names))
        rec = {"conversations": [{"from": mapping[r], "value": c} for r, c in roles]}
        assert to_example(rec, "messages") == want
    assert to_example({"messages": [{"role": "user", "content": "a"}]}, "messages").system is None


def test_prompt_completion_and_text():
    assert to_example({"prompt": "p", "completion": "c"}, "prompt_completion") == conv("p", "c")
    assert to_example({"text": "raw"}, "text") == Text("raw")


FACT = {"question": "What is the capital of France?", "answer": "Paris",
        "statement": "The capital of France is Paris, and Paris is large."}


def test_knowledge_formats():
    assert to_example(FACT, "qa") == conv("What is the capital of France?", "Paris")
    assert to_example(FACT, "masking") == conv("Fill in the blank: The capital of France is ____, and ____ is large.",
                                               "Paris")
    assert to_example(FACT, "completion") == conv("Complete the statement: The capital of France is",
                                                  "Paris, and Paris is large.")
    ex = to_example(FACT, "completion_no_system")
    assert ex.no_system and ex.turns == conv("Complete the statement: The capital of France is",
                                             "Paris, and Paris is large.").turns
    first = to_example({**FACT, "statement": "Paris is the capital of France."}, "completion")
    assert first == conv("Complete the statement:", "Paris is the capital of France.")


@pytest.mark.parametrize("fmt", ["masking", "completion", "completion_no_system"])
def test_answer_must_occur_in_statement(fmt):
    with pytest.raises(ConfigError, match=rf"format '{fmt}' \(facts.jsonl:3\).*'answer'.*'statement'"):
        to_example({**FACT, "answer": "Lyon"}, fmt, where="facts.jsonl:3")
    with pytest.raises(ConfigError, match="missing field 'statement'"):
        to_example({"question": "q", "answer": "a"}, fmt)


def test_format_errors():
    with pytest.raises(ConfigError, match="unknown data format 'alpacca'.*" + ", ".join(FORMATS)):
        to_example({}, "alpacca")
    with pytest.raises(ConfigError, match=r"format 'alpaca' \(rec 7\): missing field 'output'"):
        to_example({"instruction": "x"}, "alpaca", where="rec 7")
    with pytest.raises(ConfigError, match="format 'prompt_completion': field 'completion' must be a string, got int"):
        to_example({"prompt": "x", "completion": 3}, "prompt_completion")
    with pytest.raises(ConfigError, match="format 'messages'.*missing field 'messages'"):
        to_example({"text": "x"}, "messages")
    with pytest.raises(ConfigError, match=r"field 'messages\[1\].role' must be one of"):
        to_example({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}, "messages")
    with pytest.raises(ConfigError, match=r"field 'conversations\[0\].value' must be a string"):
        to_example({"conversations": [{"from": "human", "value": None}]}, "messages")
    with pytest.raises(ConfigError, match=r"field 'messages\[1\]': a system message is only allowed first"):
        to_example({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "messages")
    with pytest.raises(ConfigError, match="field 'messages' must be a list"):
        to_example({"messages": "hi"}, "messages")
    with pytest.raises(ValueError, match="contradicts"):
        Conversation([], system="S", no_system=True)


# ---------------------------------------------------------------- named templates

MULTI = conv("Hi", "Hello", "Q2", "A2")
CHATML_MULTI = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
                "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n")
CASES = [  # (id, conversation, template, whole rendering, trained tokens only); byte tokenizer, BOS <s>, EOS </s>
    ("chatml-system", conv("Hi", "Hello", system="Sys"), "chatml",
     "<s><|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello"
     "<|im_end|>\n</s>", "Hello<|im_end|>\n</s>"),
    ("chatml-multi", MULTI, "chatml", "<s>" + CHATML_MULTI + "</s>", "Hello<|im_end|>\nA2<|im_end|>\n</s>"),
    ("vicuna", conv("Hi", "Hello"), "vicuna_v1.1", f"<s>{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello</s>", " Hello</s>"),
    ("vicuna-multi", MULTI, "vicuna_v1.1",
     f"<s>{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello</s>USER: Q2 ASSISTANT: A2</s>", " Hello</s> A2</s>"),
    ("vicuna-system", conv("Hi", "Hello", system="Sys"), "vicuna_v1.1", "<s>Sys USER: Hi ASSISTANT: Hello</s>",
     " Hello</s>"),
    ("vicuna-no-system", conv("Hi", "Hello", no_system=True), "vicuna_v1.1", "<s>USER: Hi ASSISTANT: Hello</s>",
     " Hello</s>"),
    ("llama2-system", conv("Hi ", " Hello\n", system="Sys"), "llama2",
     "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST] Hello </s>", " Hello </s>"),
    ("llama2-multi", MULTI, "llama2", "<s>[INST] Hi [/INST] Hello </s><s>[INST] Q2 [/INST] A2 </s>",
     " Hello </s> A2 </s>"),
    ("llama2-open", conv("Hi", "Hello", "Q2"), "llama2", "<s>[INST] Hi [/INST] Hello </s><s>[INST] Q2 [/INST]",
     " Hello </s>"),
    ("none", conv("2+2=", "4"), "none", "<s>2+2=4</s>", "4</s>"),
    ("none-multi", MULTI, "none", "<s>HiHello</s>Q2A2</s>", "Hello</s>A2</s>"),
]
EXPECTED = {(c[1].turns[0].content, len(c[1].turns), c[2]): c[3] for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_named_template_literal_and_mask(byte_tok, case):
    _, example, template, text, answer = case
    assert rendered(byte_tok, example, template) == (text, answer)


@pytest.mark.parametrize("template", TEMPLATES[1:])
def test_every_answer_eos_trained(byte_tok, template):
    """Multi-turn: each assistant turn's end-of-turn token is a target, no user turn's is."""
    eot = "<|im_end|>" if template == "chatml" else "</s>"
    flags = eot_trained(byte_tok, template, MULTI, eot)
    assert flags == ([False, True, False, True] if template == "chatml" else [True, True])


@pytest.mark.parametrize("template", TEMPLATES[1:])
def test_train_on_prompt_and_all_false(byte_tok, template):
    ids, trained = render(MULTI, byte_tok, template)
    ids2, trained2 = render(MULTI, byte_tok, template, train_on_prompt=True)
    assert ids2 == ids and all(trained2) and not all(trained)
    # nothing to learn: returned as is, all flags off, for the caller to drop and count
    assert not any(render(conv("only a question"), byte_tok, template)[1])


def test_text(byte_tok, smollm2):
    ids, trained = render(Text("raw text"), byte_tok, "llama2")
    assert byte_tok.decode(ids) == "<s>raw text</s>" and all(trained)
    ids, trained = render(Text("raw text"), smollm2, "auto")  # SmolLM2 adds no BOS
    assert ids == smollm2.encode("raw text") + [smollm2.eos_token_id] and all(trained)


def test_chatml_uses_special_tokens(smollm2):
    ids, _ = render(MULTI, smollm2, "chatml")
    assert ids == smollm2.encode(CHATML_MULTI, add_special_tokens=False)  # <|im_end|> is EOS: nothing appended


@pytest.mark.parametrize("template", ["vicuna_v1.1", "llama2"])
def test_sentencepiece_spaces(spm_tok, template):
    """Pieces tokenized apart give the tokens of the whole string: no doubled or lost dummy-prefix space."""
    text = EXPECTED[("Hi", 4, template)]
    ids, _ = render(MULTI, spm_tok, template)
    assert ids == spm_tok.encode(text[len("<s>"):])
    assert "▁▁" not in "".join(spm_tok.convert_ids_to_tokens(ids))


def test_template_errors(byte_tok):
    with pytest.raises(ConfigError, match="unknown chat template 'llama3'.*" + ", ".join(TEMPLATES)):
        render(MULTI, byte_tok, "llama3")
    with pytest.raises(ConfigError, match="template 'auto': this tokenizer has no chat template; pick a named"):
        render(MULTI, byte_tok, "auto")
    with pytest.raises(ConfigError, match="template 'llama2': turns must alternate"):
        render(Conversation([Turn("assistant", "x")]), byte_tok, "llama2")


# ---------------------------------------------------------------- auto (the tokenizer's own template)


def eot_trained(tok, template, example=MULTI, eot="<|im_end|>"):
    """Flags of every end-of-turn token, in order."""
    ids, trained = render(example, tok, template)
    eot_id = tok.convert_tokens_to_ids(eot)
    return [t for i, t in zip(ids, trained) if i == eot_id]


def test_auto_tiny_chatml():
    tok = tiny_tokenizer()
    example = conv("w1 w2", "w3 w4", "w5", "w6")
    ids, trained = render(example, tok, "auto")
    msgs = [{"role": t.role, "content": t.content} for t in example.turns]
    assert ids == tok.apply_chat_template(msgs, tokenize=True)["input_ids"]
    assert tok.decode([i for i, t in zip(ids, trained) if t]) == "w3 w4 <|im_end|> w6 <|im_end|>"
    assert eot_trained(tok, "auto", example) == [False, True, False, True]  # each answer's EOS, no user's
    # this template injects no system prompt: no_system changes nothing
    assert render(conv("w1", "w2", no_system=True), tok, "auto") == render(conv("w1", "w2"), tok, "auto")


def test_auto_not_prefix_stable():
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% if loop.last %}w9 {% endif %}"
                         "{{ m['content'] }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
    with pytest.raises(ConfigError, match="not render this conversation prefix-stably"):
        render(conv("w1", "w2", "w3", "w4"), tok, "auto")


def test_auto_default_system_with_preamble():
    """A Llama 3-like template: text before the system turn that must survive when the default is suppressed."""
    tok = make_byte_tok()
    tok.chat_template = ("{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|im_start|>system\nDefault"
                         "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert rendered(tok, conv("Hi", "Hello"), "auto")[0].startswith("<s><|im_start|>system\nDefault<|im_end|>\n")
    text, answer = rendered(tok, conv("Hi", "Hello", no_system=True), "auto")
    assert text == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n</s>"
    assert answer == "Hello<|im_end|>\n</s>"


SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_auto_smollm2(smollm2):
    msgs = [{"role": t.role, "content": t.content} for t in MULTI.turns]
    ids, trained = render(MULTI, smollm2, "auto")
    assert ids == smollm2.apply_chat_template(msgs, tokenize=True)["input_ids"]
    assert smollm2.decode(ids) == SMOL_SYSTEM + CHATML_MULTI
    assert smollm2.decode([i for i, t in zip(ids, trained) if t]) == "Hello<|im_end|>\nA2<|im_end|>\n"
    assert eot_trained(smollm2, "auto") == [False, False, True, False, True]  # system, user, answer, user, answer
    # content that starts with a newline: "\n\n" would be one token in a whole-string tokenization
    text, answer = rendered(smollm2, conv("Hi", "\nHello"), "auto")
    assert answer == "\nHello<|im_end|>\n" and text.endswith("assistant\n\nHello<|im_end|>\n")


def test_auto_smollm2_knowledge_formats(smollm2):
    prompt = "<|im_start|>user\nComplete the statement: The capital of France is<|im_end|>\n<|im_start|>assistant\n"
    answer = "Paris, and Paris is large.<|im_end|>\n"
    assert rendered(smollm2, to_example(FACT, "completion"), "auto") == (SMOL_SYSTEM + prompt + answer, answer)
    assert rendered(smollm2, to_example(FACT, "completion_no_system"), "auto") == (prompt + answer, answer)
    text, answer = rendered(smollm2, to_example(FACT, "masking"), "auto")
    assert "Fill in the blank: The capital of France is ____, and ____ is large." in text and answer == \
        "Paris<|im_end|>\n"
    # an explicit system prompt replaces the default
    text, _ = rendered(smollm2, conv("q", "a", system="S"), "auto")
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n") and "SmolLM" not in text


def test_names_match_the_config_schema():
    from sftjax import config

    assert set(FORMATS) == set(config.FORMATS) and set(TEMPLATES) == set(config.TEMPLATES)
