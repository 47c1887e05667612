"""Moved to `diptych.metrics` (a core part: the CLIP judge and the datagen CLIP filter use the same CLIP
wrapper as the benchmarks); this old name is the same module object, so imports, attributes and
monkeypatching through it keep working."""

import sys

from .. import metrics as _module

sys.modules[__name__] = _module
