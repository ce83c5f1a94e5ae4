"""`llmserve chat`: build the backend (in-process engine or remote server), the UI, and chat."""

from __future__ import annotations

import re
import sys

from llmserve.chat.backends import ChatBackend, ChatError
from llmserve.chat.loop import ChatLoop
from llmserve.chat.options import ChatOptions, worker_config
from llmserve.chat.session import Conversation
from llmserve.chat.ui import make_ui
from llmserve.errors import ConfigError

# The key paths build_engine and WorkerConfig.validate put in their messages.
_CONFIG_KEY_RE = re.compile(r"(?<![\w.])(?:workers\[0\]|chat)\.(\w+)")


def run_chat(options: ChatOptions) -> int:
    """Chat until the user quits; 0 then, 1 when the model or server cannot be reached, 2 for bad flags."""
    try:
        backend = open_backend(options)
    except ConfigError as exc:
        print(f"llmserve chat: {as_flags(str(exc))}", file=sys.stderr)
        return 2
    except ChatError as exc:
        print(f"llmserve chat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the model loads
        return 130
    try:
        ui = make_ui(options.style, options.multiline)
        conversation = Conversation(options.system, keep_history=options.keep_history)
        return ChatLoop(backend, ui, conversation, options.params, is_debug=options.is_debug).run()
    finally:
        backend.close()


def as_flags(message: str) -> str:
    """A config error in the words of the command line: `workers[0].model_path` becomes `--model-path`."""
    return _CONFIG_KEY_RE.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def open_backend(options: ChatOptions) -> ChatBackend:
    """Connect to the server, or load the model in this process."""
    if options.is_remote:
        from llmserve.chat.remote import RemoteBackend

        assert options.base_url is not None
        return RemoteBackend.connect(options.base_url, options.model, options.api_key, options.seed,
                                     options.ca_cert)
    config = worker_config(options)
    from llmserve.chat.local import LocalBackend

    try:
        backend = LocalBackend.load(config)
    except (OSError, ValueError) as exc:  # missing folder, unreadable checkpoint, bad template
        raise ChatError(f"cannot load {config.model_path}: {exc}") from None
    if options.params.max_new_tokens >= backend.max_model_len:
        raise ConfigError(f"--max-new-tokens {options.params.max_new_tokens}: must be below the context "
                          f"length of {backend.max_model_len} tokens")
    return backend
