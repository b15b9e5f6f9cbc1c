"""Programs the tests run in a namespace or a subprocess of their own, as files
(so that the linters see them): `child(name)` is the path to run."""
import os


def child(name: str) -> str:
    """Path of tests/children/<name>.py, to run as `sys.executable, child(name), args...`."""
    return os.path.join(os.path.dirname(__file__), name + ".py")
