"""A stand-in for ComfyUI's node API, used only where ComfyUI itself is absent.

The node modules are written against ComfyUI's V3 API (``comfy_api.latest``: ``io``, ``ui``,
``ComfyExtension``). ComfyUI is not on PyPI, so in CI and in a plain ``pip install`` that package
does not exist; :mod:`comfy_nodes.host` then hands out these classes instead, so that the nodes'
``define_schema`` and ``execute`` run unchanged on real IMAGE tensors. They record what a node
declares and returns and do nothing else: no ComfyUI behaviour is imitated, and inside ComfyUI
they are never used (``tests/integration/test_comfyui_host.py`` runs the same nodes for real).

Only the parts of the API the node modules use are here; a node that needs more fails loudly in
the unit tests (``AttributeError`` on this module), which is the cue to add it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class _Port:
    """An input or output declaration: keeps every argument it was given."""

    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, **extra: Any) -> None:
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.extra = extra  # default, options, min, max, multiline, is_output_list, ...

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({self.id!r})"


def _comfy_type(io_type: str, name: str) -> type:
    """A type namespace with ``Input`` and ``Output``, like ``io.Image`` or ``io.Custom("X")``."""
    input_cls = type("Input", (_Port,), {"io_type": io_type, "__qualname__": f"{name}.Input"})
    output_cls = type("Output", (_Port,), {"io_type": io_type, "__qualname__": f"{name}.Output"})
    return type(name, (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


class _IO:
    """``comfy_api.latest.io``: the types and classes the node modules use."""

    Image = _comfy_type("IMAGE", "Image")
    Mask = _comfy_type("MASK", "Mask")
    Float = _comfy_type("FLOAT", "Float")
    Int = _comfy_type("INT", "Int")
    String = _comfy_type("STRING", "String")
    Boolean = _comfy_type("BOOLEAN", "Boolean")
    Combo = _comfy_type("COMBO", "Combo")
    Model = _comfy_type("MODEL", "Model")
    Clip = _comfy_type("CLIP", "Clip")
    Vae = _comfy_type("VAE", "Vae")
    Conditioning = _comfy_type("CONDITIONING", "Conditioning")
    Latent = _comfy_type("LATENT", "Latent")

    @staticmethod
    def Custom(io_type: str) -> type:
        return _comfy_type(io_type, io_type)

    class NumberDisplay(str, Enum):
        number = "number"
        slider = "slider"

    class Hidden(str, Enum):
        unique_id = "UNIQUE_ID"
        prompt = "PROMPT"
        extra_pnginfo = "EXTRA_PNGINFO"

    @dataclass
    class Schema:
        node_id: str
        display_name: str | None = None
        category: str = "sd"
        inputs: list = field(default_factory=list)
        outputs: list = field(default_factory=list)
        hidden: list | None = None
        description: str = ""
        is_input_list: bool = False
        is_output_node: bool = False
        is_deprecated: bool = False
        is_experimental: bool = False
        not_idempotent: bool = False

    class NodeOutput:
        def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None) -> None:
            self.args = args
            self.ui = ui

        @property
        def result(self) -> tuple | None:
            return self.args if self.args else None

        def __getitem__(self, index: int) -> Any:
            return self.args[index]

    class ComfyNode:
        hidden = None

        @classmethod
        def define_schema(cls):  # pragma: no cover - every node overrides it
            raise NotImplementedError

        @classmethod
        def execute(cls, **kwargs):  # pragma: no cover - every node overrides it
            raise NotImplementedError


io = _IO


class _UIOutput:
    def __init__(self, **values: Any) -> None:
        self.values = values

    def as_dict(self) -> dict:
        return dict(self.values)


class _UI:
    """``comfy_api.latest.ui``: keeps what a node would show."""

    class PreviewImage(_UIOutput):
        def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
            super().__init__(images=image, animated=(animated,))

    class PreviewText(_UIOutput):
        def __init__(self, value: str, **kwargs: Any) -> None:
            super().__init__(text=(value,))


ui = _UI


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when an extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type]:
        """The node classes this extension provides."""
