"""Moved to :mod:`sdzoo.mirror` (``sdzoo.mirror.server``); this alias warns and goes in sdzoo 0.3.0."""
from ..compat import moved_module

__getattr__ = moved_module(__name__, 'sdzoo.mirror.server', ('HubMirror', 'add_mirror_arguments', 'run_mirror', 'main'))

if __name__ == '__main__':  # `python -m sdzoo.hub.mirror ROOT`, the old way to start it
    import warnings
    warnings.warn('python -m sdzoo.hub.mirror moved to python -m sdzoo.mirror.server (or: sdzoo mirror)',
                  DeprecationWarning, stacklevel=1)
    import runpy
    runpy.run_module('sdzoo.mirror.server', run_name='__main__', alter_sys=True)
