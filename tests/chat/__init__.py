"""Tests of llmserve/chat/ and `llmserve chat`."""
