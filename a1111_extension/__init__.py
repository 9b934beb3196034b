"""A1111 / Forge adapter, imported as ``lora_likeness_a1111`` by ``scripts/likeness.py``.

It may import A1111's ``modules``; everything it computes comes from ``lora_likeness``.
The X/Y/Z hooks, axes and the Likeness tab arrive with the A1111 issue.
"""

import lora_likeness  # noqa: F401  (registered by likeness_bootstrap before this package)
