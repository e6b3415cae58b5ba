import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# Compiling dominates the suite: both pytest workers and the subprocesses they start (examples,
# multi-device checks) share JAX's persistent compilation cache, so a program that several tests
# build (the same optax or gradx step on the same shapes) compiles once per run. A cache hit is
# the same executable; .jax-cache/ is ignored by git.
for name, value in {
        "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), ".jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}.items():
    os.environ.setdefault(name, value)
