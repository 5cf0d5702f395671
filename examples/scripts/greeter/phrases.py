"""Greetings by language."""

GREETINGS = {"en": "Hello", "de": "Hallo", "fr": "Bonjour", "es": "Hola"}


def greet(name: str, language: str) -> str:
    return f"{GREETINGS.get(language, GREETINGS['en'])}, {name}!"
