"""Root pytest configuration (applies to tests/ and the doctests under src/ and experiments/).

DeepSpeed, when transformers imports it, prints an accelerator notice to stdout unless
DS_ACCELERATOR is set; that line would land inside doctest output. CPU machines here.
"""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
