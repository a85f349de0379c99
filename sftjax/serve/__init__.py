"""sftjax-serve: the OpenAI-compatible HTTP API over the continuous-batching engine (sftjax.generate.engine)."""
