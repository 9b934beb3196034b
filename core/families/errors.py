"""The error every family raises for a model the user must fix; its own module so the family base and the
tokenizer finder both raise it without importing each other."""


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer cannot be loaded; the message says what to do."""
