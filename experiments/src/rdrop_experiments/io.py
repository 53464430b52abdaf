"""Old name of :mod:`rdrop_experiments.storage` (result storage), kept so existing imports work."""

from rdrop_experiments.storage import *  # noqa: F403
from rdrop_experiments.storage import __all__  # noqa: F401
