"""Target backends (importable as qcompiler.targets)."""
