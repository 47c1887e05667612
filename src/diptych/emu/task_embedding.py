"""Moved to `diptych.conditioning.task_embedding`; this old name is the same module object, so imports,
attributes and monkeypatching through it keep working."""

import sys

from ..conditioning import task_embedding as _module

sys.modules[__name__] = _module
