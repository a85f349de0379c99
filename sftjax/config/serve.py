"""The serving part of the schema: sftjax-serve's address, batching and limits."""

from __future__ import annotations

from dataclasses import dataclass

from sftjax.config.base import require


@dataclass
class ServeConfig:
    """sftjax-serve: an OpenAI-compatible HTTP server over the continuous-batching engine (sftjax.generate.engine)."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = ""  # the id clients send as "model"; "" = model.init_from
    max_batch: int = 8  # rows decoded together
    max_len: int = 0  # tokens per request (prompt + answer); 0 = the model's max positions
    chunk: int = 8  # decode steps per device call; a finished row frees its slot at the next chunk boundary
    warmup_tokens: int = 256  # compile the prompt buckets up to this length (and their decode windows) at start; 0 = off
    default_max_tokens: int = 256  # when a request gives no max_tokens
    max_body_bytes: int = 1_048_576  # larger request bodies are refused (413)
    max_n: int = 16  # choices per request

    def validate(self) -> None:
        require(isinstance(self.host, str) and bool(self.host), "serve.host", "a host name or address", self.host)
        require(0 <= self.port <= 65535, "serve.port", "a port number in [0, 65535] (0: any free port)", self.port)
        require(self.max_batch >= 1, "serve.max_batch", "a positive integer", self.max_batch)
        require(self.max_len >= 0, "serve.max_len", "an integer >= 0 (0: the model's positions)", self.max_len)
        require(self.chunk >= 1, "serve.chunk", "a positive integer", self.chunk)
        require(self.warmup_tokens >= 0, "serve.warmup_tokens", "an integer >= 0 (0: compile on first use)",
                self.warmup_tokens)
        require(self.default_max_tokens >= 1, "serve.default_max_tokens", "a positive integer",
                self.default_max_tokens)
        require(self.max_body_bytes >= 1024, "serve.max_body_bytes", "an integer >= 1024", self.max_body_bytes)
        require(self.max_n >= 1, "serve.max_n", "a positive integer", self.max_n)
