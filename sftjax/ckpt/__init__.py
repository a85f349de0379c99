"""Checkpoints: Orbax state (resume), Hugging Face import/export, GGUF conversion for the embedded default."""
