"""The jail side's entry point. ``Sandbox`` starts its zygote as
``python -I -S -B <this file> --zygote FD``; without arguments, it reads one request on stdin
and writes the events on stdout (handy for debugging).

``-I -S`` keeps PYTHONPATH, site-packages and this folder off ``sys.path``, which every
program inherits, so rltrain cannot be imported here. This package is loaded from its folder
instead, under the private name ``_rltrain_sandbox`` (its modules import one another
relatively), before the zygote forks anything: the jail needs none of these files.
"""
import importlib
import importlib.util
import os
import sys

_PACKAGE = "_rltrain_sandbox"


def _load_package():
    """Import this folder's package as ``_rltrain_sandbox``, without touching ``sys.path``."""
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        _PACKAGE, os.path.join(here, "__init__.py"), submodule_search_locations=[here],
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = package
    spec.loader.exec_module(package)


if __name__ == "__main__":
    _load_package()
    launcher = importlib.import_module(f"{_PACKAGE}.launcher")
    if len(sys.argv) == 3 and sys.argv[1] == "--zygote":
        launcher._zygote_main(int(sys.argv[2]))
    else:  # one-shot: a request on stdin, events on stdout (handy for debugging)
        launcher._jail_main()
