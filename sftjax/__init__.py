"""sftjax: supervised fine-tuning of Llama-family models in JAX/Flax NNX, built to study data composition."""

__version__ = "0.1.0"


def _check_jax_flax() -> None:
    """flax < 0.12.10 fails to import under jax 0.11 with an AttributeError deep inside flax; say what to install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        jax_v, flax_v = version("jax"), version("flax")
    except PackageNotFoundError:
        return
    numbers = lambda v: tuple(int(x) for x in v.split(".")[:3] if x.isdigit())  # noqa: E731
    if numbers(jax_v) >= (0, 11) and numbers(flax_v) < (0, 12, 10):
        raise ImportError(f"sftjax: flax {flax_v} does not work with jax {jax_v}; install flax>=0.12.10,<0.13 "
                          "(pip install 'sftjax[gpu]' or 'sftjax[tpu]' pins a working pair)")


_check_jax_flax()
