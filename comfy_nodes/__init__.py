"""ComfyUI nodes: each a schema plus one call into ``lora_likeness``.

The node families arrive with the ComfyUI issue; until then the pack loads and registers nothing.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
