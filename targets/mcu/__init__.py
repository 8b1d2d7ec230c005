"""qcompiler.targets.mcu package."""
