"""Training recipes (YAML, no code), shipped inside the wheel so `neuroscribe demo` finds them anywhere."""
