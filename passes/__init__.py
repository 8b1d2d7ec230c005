"""The passes: one file, one class, one job each (importable as qcompiler.passes)."""
