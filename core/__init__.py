"""Likeness core: identity scores for face LoRAs, shared by the CLI, ComfyUI and A1111.

Importable as ``lora_likeness`` (installed, or registered by ``likeness_bootstrap``); never as a
bare ``core``. Nothing heavy happens at import time: both hosts import every extension at start-up,
so onnxruntime, insightface and matplotlib are imported only by the functions that need them.

Modules, one concern each:
    images        decoding photos robustly into RGB arrays; atomic file writes
    faces         FaceEngine: pack discovery, providers, detect -> align -> embed
    cache         on-disk face cache keyed by file content + engine fingerprint
    references    ReferenceSet: reference embeddings, leave-one-out baseline, outliers
    scoring       pure functions: per-image scores, group statistics, bootstrap CI
    labels        grouping by folder or by LoRA (A1111 / ComfyUI metadata, Kohya names)
    pipeline      score a folder of images against references (what `likeness score` runs)
    report        CSV / JSON / Markdown / plot / contact sheet
    progress      progress + cancellation interface every front door implements
    dependencies  runtime requirements and the onnxruntime variant check (stdlib only)
    cli           the `likeness` command
"""

__version__ = "0.1.0"
