"""Likeness as a ComfyUI node pack (V3 node API; ComfyUI 0.3.48 or newer).

ComfyUI imports this folder as a package (``custom_nodes/<folder>/__init__.py``). The shared core
is registered as ``lora_likeness`` first, so the node modules import it by that unique name.
Only ``comfy_entrypoint`` and ``WEB_DIRECTORY`` (the node help pages) are exported: a module that
also exported ``NODE_CLASS_MAPPINGS`` would have its entrypoint ignored by ComfyUI.

Imported as a plain module, not a package, there is nothing to register: pytest does that when it
collects the tests of a checkout whose folder name is no Python identifier (``lora-likeness``,
``ComfyUI-Likeness``), and the relative imports below would fail there.
"""

if __package__:
    from .likeness_bootstrap import load_core

    load_core()

    from .comfy_nodes import comfy_entrypoint

    #: Served by ComfyUI at ``/extensions/<this folder>/``; the frontend's node help reads
    #: ``docs/<node id>/<locale>.md``, then ``docs/<node id>.md`` there (web/docs/, one page per node).
    WEB_DIRECTORY = "./web"

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
