"""Moved to `diptych.shapes_core.judge`; this old name is the same module object, so imports, attributes
and monkeypatching through it keep working, and `python -m diptych.shapes.judge` still trains the judge."""

import sys

from ..shapes_core import judge as _module

if __name__ == "__main__":
    _module.main()
else:
    sys.modules[__name__] = _module
