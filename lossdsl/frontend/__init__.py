"""Stages 1-2: spec text → IR (Lark grammar, `parse`) → resolved IR (`resolve`: names, parameters,
composition inlined), and the catalogue's index of spec files (`registry`). Nothing here imports SymPy."""
