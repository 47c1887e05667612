"""Emu Edit's applications in diptych: soft-mask data generation (`datagen`, `softmask`), task inversion
(`inversion`), training the task predictor (`tasks`), and their commands (`datagen_cli`, `inversion_cli`).

The primitives they share with the `Editor` and the trainer (task embeddings, the task taxonomy and
predictor, multi-turn thresholding) are in `diptych.conditioning`; `emu.task_embedding`, `emu.multiturn`
and the names of `emu.tasks` stay importable from here."""
