"""Print the resolved versions of the packages that matter, one ``name version`` line each.

    VENV/bin/python .ci/versions.py LABEL

Run with a venv's interpreter after installing, so a CI log says what the registry served that day
(standard library only: it reads distribution metadata and imports nothing).
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

PACKAGES = (
    "torch", "numpy", "Pillow", "diffusers", "transformers", "peft", "safetensors", "accelerate",
    "huggingface-hub", "tokenizers", "insightface", "onnxruntime", "onnxruntime-gpu", "matplotlib",
    "opencv-python", "opencv-python-headless", "rich", "pytest", "jsonschema", "lora-likeness",
)


def main() -> int:
    label = sys.argv[1] if len(sys.argv) > 1 else sys.prefix
    print(f"== resolved versions ({label}): python {platform.python_version()}")
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name.endswith(("-gpu", "-headless")):
                continue  # alternatives: named only when present
            version = "(not installed)"
        print(f"   {name:<24} {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
