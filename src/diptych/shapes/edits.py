"""Moved to `diptych.shapes_core.edits`; this old name is the same module object, so imports, attributes
and monkeypatching through it keep working."""

import sys

from ..shapes_core import edits as _module

sys.modules[__name__] = _module
