"""Emu Edit's conditioning primitives, used by the `Editor`, the trainer and the applications alike:

- `task_embedding`: one learned vector per edit task, added to the Fill transformer's timestep embedding
  (`TaskEmbedding`, `task_conditioning`, attach / save / load / find);
- `tasks`: the task taxonomy, `map_task`, and the shipped `TaskPredictor` (instruction -> task);
- `thresholding`: Emu Edit's per-pixel thresholding between turns of a multi-turn edit.

They import nothing of diptych above `errors`, `files` and `adapters`; `diptych.emu` (data generation,
task inversion, training the predictor) builds on them and keeps the old names importable
(`diptych.emu.task_embedding`, `diptych.emu.multiturn`, `diptych.emu.tasks`).
"""
