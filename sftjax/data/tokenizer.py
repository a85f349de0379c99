"""Which tokenizer a run uses, always as a Hugging Face tokenizer so one rendering path serves every model.

Models without a tokenizer (random-init ``tiny``) get a byte-level one built offline: 256 byte tokens plus a begin
token and ChatML turn markers, with a ChatML chat template, so chat formats and loss masks work exactly as they do for real
models. It is saved into the run directory like any other tokenizer.
"""

from __future__ import annotations

from pathlib import Path

BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer():
    """UTF-8 bytes as 256 ids, then <|begin|> (BOS), <|im_end|> (end of turn, EOS and padding, as in SmolLM2's
    ChatML) and <|im_start|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = BYTE_CHAT_TEMPLATE
    return fast


def load_tokenizer(path: Path | None):
    """The HF tokenizer at ``path``, or the byte-level one when there is none."""
    if path is None:
        return byte_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def run_tokenizer(cfg, kept: Path | None = None, source=None):
    """The tokenizer a run's data is made with. data.tokenizer=auto: the one kept in the run directory (``kept``,
    so a resumed run reads the same tokens), else the one that came with model.init_from (``source``), else
    byte-level. Checked against the model's vocabulary before anything is tokenized."""
    from sftjax.config import ConfigError

    choice = cfg.data.tokenizer
    if choice == "bytes":
        path = None
    elif choice != "auto":
        path = Path(choice).expanduser()
    elif kept is not None:
        path = kept if kept.is_dir() else None
    else:
        path = source.tokenizer_dir if source is not None else None
    tokenizer = load_tokenizer(path)
    if cfg.model.vocab_size < len(tokenizer):
        raise ConfigError(f"config key 'model.vocab_size': expected >= {len(tokenizer)} (the vocabulary of tokenizer "
                          f"{path or 'bytes'}), got {cfg.model.vocab_size}")
    return tokenizer
