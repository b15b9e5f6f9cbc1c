"""Imports vrrpd.<name> for each name in argv and checks each comes from the vrrpd
package first on the path (the build under test, not the installed one)."""
import importlib
import sys

import vrrpd

for n in sys.argv[1:]:
    m = importlib.import_module("vrrpd." + n)
    assert m.__file__.startswith(vrrpd.__path__[0]), m.__file__
