"""`llmserve chat --model-path` driven through a real pseudo-terminal, and through a pipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .terminal import chat_env

pytestmark = pytest.mark.timeout(120)

GREEDY = ("--temperature", "0")


def local(model_dir: Path, *args: str) -> tuple[str, ...]:
    return ("--model-path", str(model_dir), *GREEDY, *args)


def read_json(path: Path) -> list[dict[str, str]]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_turns_regen_remove_save_load(spawn_chat, tiny_model_dir: Path, tmp_path: Path) -> None:
    # No --style: a terminal gets the rich style (markdown output, prompt_toolkit input).
    term = spawn_chat(*local(tiny_model_dir, "--debug", "--max-new-tokens", "12"))
    first = term.turn("hello there")
    assert first["conv_template"] == f"{tiny_model_dir.name} (tokenizer)"
    assert first["prompt"].endswith("hello there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert first["outputs"] and first["speed (token/s)"] > 0

    second = term.turn("and again")
    assert first["prompt"].removesuffix("\n\n") in second["prompt"]  # the history went through the template
    assert first["outputs"] + "<|eot_id|>" in second["prompt"]

    regen = term.turn("!!regen")
    assert (regen["prompt"], regen["outputs"]) == (second["prompt"], second["outputs"])  # greedy: same answer

    term.send("!!save full.json")
    term.notice("saved 4 messages to full.json")
    assert read_json(tmp_path / "full.json") == [
        {"role": "user", "content": "hello there"}, {"role": "assistant", "content": first["outputs"]},
        {"role": "user", "content": "and again"}, {"role": "assistant", "content": second["outputs"]},
    ]
    term.send("!!remove")
    term.notice("removed the last exchange")
    term.send("!!save short.json")
    term.notice("saved 2 messages")
    assert read_json(tmp_path / "short.json") == read_json(tmp_path / "full.json")[:2]

    term.send("!!reset")
    term.notice("history cleared")
    term.send("!!load full.json")
    term.notice("loaded 4 messages from full.json")
    third = term.turn("third")
    assert third["prompt"].startswith(second["prompt"] + second["outputs"] + "<|eot_id|>")
    term.send("!!exit")
    assert term.wait_exit() == 0


def test_ctrl_c_stops_the_answer_and_keeps_the_session(spawn_chat, tiny_model_dir: Path, tmp_path: Path) -> None:
    # 3000 greedy tokens take the tiny model several seconds: long enough to interrupt.
    term = spawn_chat(*local(tiny_model_dir, "--style", "simple", "--max-new-tokens", "3000"))
    for message in ("tell me everything", "and more"):
        term.expect("user: ")
        term.send(message)
        term.expect("assistant: ")
        term.expect(r"\S{4}")  # the answer has begun
        term.interrupt()
        term.notice("answer stopped]")
    term.expect("user: ")
    term.send("!!save stopped.json")
    term.notice("saved 4 messages")
    saved = read_json(tmp_path / "stopped.json")
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert all(m["content"] for m in saved)
    term.expect("user: ")
    term.interrupt()  # Ctrl-C at the prompt quits
    assert term.wait_exit() == 0


def run_piped(model_dir: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llmserve", "chat", *local(model_dir, *args)]
    return subprocess.run(command, input=text, capture_output=True, text=True, timeout=90, env=chat_env(),
                          encoding="utf-8", errors="replace")


def test_piped_stdin_answers_once_and_exits(tiny_model_dir: Path) -> None:
    result = run_piped(tiny_model_dir, "hi\n", "--debug", "--max-new-tokens", "8", "--system", "Be brief.")
    assert result.returncode == 0, result.stderr
    answer, debug_line = result.stdout.removesuffix("\n").rsplit("\n", 1)
    debug = json.loads(debug_line)
    assert answer == debug["outputs"] != ""
    assert debug["prompt"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.")
    assert "user:" not in result.stdout and "error" not in result.stderr


def test_oldest_turns_are_dropped_when_the_context_is_full(tiny_model_dir: Path) -> None:
    messages = ["alpha alpha alpha", "bravo bravo bravo", "charlie charlie", "word " * 80, "delta delta"]
    result = run_piped(tiny_model_dir, "\n".join(messages) + "\n", "--debug", "--max-model-len", "64",
                       "--max-new-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert "the conversation no longer fits the context: dropped the oldest" in result.stderr
    assert "error: the message does not fit the context and was not kept" in result.stderr
    prompts = [json.loads(line)["prompt"] for line in result.stdout.splitlines() if line.startswith('{"conv')]
    assert len(prompts) == 4  # every message but the one too long alone was answered
    assert "alpha" in prompts[0] and "alpha" not in prompts[-1] and "word" not in prompts[-1]
    assert prompts[-1].endswith("delta delta<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
