"""llmserve: one asyncio process that serves Hugging Face language models behind an OpenAI-compatible API."""

__version__ = "0.1.0"
