"""Built-in providers, all reached through litellm: ``openai``, ``azure``, ``openai_compatible``."""

__all__: list[str] = []
