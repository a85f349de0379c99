"""Random tiny Hugging Face models and a tiny offline tokenizer with a chat template, written to local directories."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Each variant exercises one architecture flag; all match conf/model/tiny.yaml's size where they can.
VARIANTS = {
    "llama_gqa": dict(kind="llama"),
    "llama_tied": dict(kind="llama", tie_word_embeddings=True),
    "llama3_scaled": dict(kind="llama", rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}),
    "qwen2_bias_tied": dict(kind="qwen2", tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6),
    "mistral_head_dim": dict(kind="mistral", head_dim=32, sliding_window=None),
}


def tiny_tokenizer(vocab_size: int = 512):
    """A word-level tokenizer over made-up words plus ChatML specials, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    words = specials + ["\n", "user", "assistant", "system"] + [f"w{i}" for i in range(vocab_size - 7)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def smollm2_tokenizer():
    """The real SmolLM2 tokenizer: a converted directory when one exists, else straight from the bundled GGUF; skips
    the test when neither is there."""
    import pytest
    from transformers import AutoTokenizer

    from sftjax.ckpt.gguf import EMBEDDED_SUBDIR, default_cache_dir, smollm2_gguf_path

    for d in (Path("/tmp/sfc") / EMBEDDED_SUBDIR, default_cache_dir() / EMBEDDED_SUBDIR):
        if (d / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(d)
    try:
        gguf = smollm2_gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def make_hf_model(path: Path, variant: str, seed: int = 0, with_tokenizer: bool = True):
    """Save a random model of ``variant`` (weights large enough that logits are not flat) and return it."""
    import torch
    import transformers

    spec = dict(VARIANTS[variant])
    kind = spec.pop("kind")
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.2, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    common.update(spec)
    if "rope_scaling" in common:
        common["rope_parameters"] = {"rope_theta": common.pop("rope_theta"), **common.pop("rope_scaling")}
    elif "rope_theta" in common:
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": common.pop("rope_theta")}
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    torch.manual_seed(seed)
    model = model_class(config_class(**common)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # biases start at zero, norms at one: make them matter
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(path)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(path)
    return model
