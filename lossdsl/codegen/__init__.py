"""Code generation: one shared printer, one kernel skeleton per target."""
