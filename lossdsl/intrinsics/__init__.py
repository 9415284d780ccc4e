"""Losses that no closed formula gives: hand-written value-and-gradient kernels (issue 8 makes
them DSL intrinsics that specs compose with)."""
