"""Emu Edit's ideas in diptych: multi-turn thresholding (`multiturn`), and, as they land, task embeddings,
task inversion and soft-mask data generation."""
