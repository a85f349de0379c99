"""sftjax-serve: an OpenAI-compatible server over any model sftjax loads (a Hydra app; `python -m sftjax.cli.serve`).

    sftjax-serve model.init_from=runs/exp1 serve.host=127.0.0.1 serve.port=8000 [serve.max_batch=8]

Routes: /health, /v1/models, /v1/chat/completions (messages rendered with the template the model was trained with),
/v1/completions (a raw prompt); streaming as server-sent events. Concurrent requests are decoded together with
continuous batching (sftjax.generate.engine). SIGTERM or Ctrl-C stops accepting, finishes the requests in flight and
exits 0. A port in use or an init_from that does not load exits 2 before serving.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys

import hydra
import uvicorn
from omegaconf import DictConfig

from sftjax.cli import config_errors
from sftjax.config import ConfigError, ServeAppConfig, check_override_keys, register_configs, to_config

logging.getLogger("absl").setLevel(logging.WARNING)
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
register_configs()


def claim_port(host: str, port: int) -> socket.socket:
    """Bind the listening socket before the model loads: a port in use fails in a second, not after a minute."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"config key 'serve.port': cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    return sock


def build(app: ServeAppConfig, log=print):
    """Load the model and start the engine; returns sftjax.serve.app.Served."""
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.generate.engine import Engine
    from sftjax.parallel.mesh import make_mesh
    from sftjax.serve.app import Served

    mesh = make_mesh(app.mesh.resolve(jax.device_count()))
    m = load_model(app.model.init_from, app.model, mesh, log=log)
    tok = m.tokenizer
    s = app.serve
    positions = m.cfg.max_position_embeddings
    max_len = min(s.max_len or positions, positions)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    engine = Engine(m.graphdef, m.params, m.cfg, max_batch=s.max_batch, max_len=max_len, chunk=s.chunk,
                    pad_id=pad, log=log)
    if s.warmup_tokens:
        engine.warmup(min(s.warmup_tokens, max_len), log=log)
    engine.start()
    return Served(engine, tok, m.template, frozenset(m.eos_ids), s.model_name or app.model.init_from, positions, s)


class DrainingServer(uvicorn.Server):
    """uvicorn's graceful shutdown on SIGTERM/SIGINT (stop accepting, finish in-flight requests), without re-raising
    the signal afterwards: a drained server exits 0, as process managers expect."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def serve(app: ServeAppConfig, log=print) -> None:
    from sftjax.serve.app import create_app

    sock = claim_port(app.serve.host, app.serve.port)
    served = build(app, log)
    host, port = sock.getsockname()[:2]
    log(f"sftjax-serve: {served.name} (template {served.template}) on http://{host}:{port}/v1, "
        f"max_batch {app.serve.max_batch}, {served.engine.max_len} tokens per request")
    config = uvicorn.Config(create_app(served), log_level="warning", timeout_graceful_shutdown=None)
    server = DrainingServer(config)
    try:
        server.run(sockets=[sock])  # SIGTERM/SIGINT: stop accepting, finish in-flight requests, return
    finally:
        served.engine.stop()
    log("sftjax-serve: stopped")


@hydra.main(version_base=None, config_path="pkg://sftjax.conf", config_name="serve")
def _main(dcfg: DictConfig) -> None:
    with config_errors("sftjax-serve"):
        app = to_config(dcfg, ServeAppConfig)
        serve(app, log=lambda m: print(m, file=sys.stderr, flush=True))


def main() -> None:
    with config_errors("sftjax-serve"):
        check_override_keys(sys.argv[1:], ServeAppConfig)
    _main()


if __name__ == "__main__":
    main()
