"""Moved to `diptych.conditioning.thresholding`; this old name is the same module object, so imports,
attributes and monkeypatching through it keep working."""

import sys

from ..conditioning import thresholding as _module

sys.modules[__name__] = _module
