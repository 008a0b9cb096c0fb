"""The optional C extension `supersub_jax.data._jpeg_region` (region decoding with the system's libjpeg-turbo: headers
from libjpeg62-turbo-dev on Debian/Ubuntu). `optional=True`: without a compiler or the headers the install still
succeeds and the input pipeline decodes whole JPEGs through simplejpeg instead (`image_ops.REGION_DECODING`).
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension('supersub_jax.data._jpeg_region', ['supersub_jax/data/_jpeg_region.c'],
                             libraries=['jpeg'], optional=True)])
