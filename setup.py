"""The one thing pyproject.toml cannot say: the optional C extension ``hasupd.host._spawn``.

``optional=True``: without a C compiler (or Python headers) the build still succeeds and hasupd
starts services through its pure-Python spawner (see hasupd/host/clone.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hasupd.host._spawn",
            sources=["hasupd/host/_spawn.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
