"""qcompiler.targets.tvm package."""
