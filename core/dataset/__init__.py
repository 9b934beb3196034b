"""Dataset preparation: real photos of a person -> a Kohya training folder (``likeness prepare``).

Photo selection, quality filters, crops, captions, Kohya layout and identity coverage; it finds faces
with the same :class:`lora_likeness.faces.FaceEngine` the scorer uses.
"""
