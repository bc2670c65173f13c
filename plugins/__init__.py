"""Built-in middleware and observers, each an ordinary pluggy plugin."""

__all__: list[str] = []
