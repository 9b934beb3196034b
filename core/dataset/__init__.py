"""Dataset preparation: real photos of a person -> a Kohya training folder (``likeness prepare``).

Photo selection, quality filters, crops, captions, Kohya layout and identity coverage; it finds faces
with the same :class:`lora_likeness.faces.FaceEngine` the scorer uses.

One entry point for every front door::

    from lora_likeness.dataset import PrepareConfig, prepare_dataset
    result = prepare_dataset(engine, PrepareConfig(photos=..., out=..., trigger="ohwx", class_word="man"), progress)

Modules: ``config`` (settings and thresholds), ``prepare`` (the pipeline), ``quality`` (face
measures, perceptual hash), ``identity`` (subject clusters, identities, coverage), ``framing``
(crop windows), ``captions`` (captions, optional WD14 tagger), ``kohya`` (folder names, repeats,
dataset.toml), ``boxes`` (imported face boxes), ``records`` (result types), ``report``
(report.json / report.html / contact sheets), ``command`` (the CLI sub-command).
Names below are imported lazily, so importing this package stays cheap for hosts.
"""

from __future__ import annotations

_EXPORTS = {
    "prepare_dataset": "prepare",
    "PrepareConfig": "config",
    "PrepareConfigError": "config",
    "IdentitySpec": "config",
    "QualityThresholds": "config",
    "SelectionSettings": "config",
    "FRAMINGS": "config",
    "PrepareResult": "records",
    "KeptImage": "records",
    "Rejection": "records",
    "REJECTION_CODES": "records",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
