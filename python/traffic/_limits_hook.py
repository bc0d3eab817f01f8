"""Registers traffic.limits_storage with the `limits` package whichever is imported first.

limits takes ~0.2 s to import, so ``import traffic`` does not import it unasked. If limits is
already imported, the storages are registered at once. If not, a finder placed first on
sys.meta_path waits for the import of ``limits`` (flask-limiter's, slowapi's or the user's):
it lets the other finders find the package, and runs the package's own loader with one step
added after it - importing traffic.limits_storage, whose classes register their schemes with
limits' registry as they are defined. The finder then leaves sys.meta_path. The loader keeps
its type (pkg_resources and importlib.resources look a package's resources up by it): only
this one load's exec_module is wrapped.
"""

import importlib.abc
import sys
import warnings


def _register_now():
    try:
        from . import limits_storage  # noqa: F401
    except Exception as e:  # never break the user's `import limits`
        warnings.warn(f"traffic: the traffic+ storages for limits could not be registered: {e!r}",
                      RuntimeWarning, stacklevel=2)


class _LimitsFinder(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, fullname, path, target=None):
        if fullname != "limits" or self.done:
            return None
        self.done = True  # once, whatever happens next (the import system iterates meta_path)
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if self in sys.meta_path:  # the search for `limits` is over: nothing iterates it now
                sys.meta_path.remove(self)
            _register_now()

        spec.loader.exec_module = exec_then_register  # this loader instance only: one spec's
        return spec


def register():
    if "limits" in sys.modules:
        _register_now()
    elif not any(isinstance(f, _LimitsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LimitsFinder())
