"""Moved to `diptych.shapes_core.world`; this old name is the same module object, so imports, attributes
and monkeypatching through it keep working."""

import sys

from ..shapes_core import world as _module

sys.modules[__name__] = _module
