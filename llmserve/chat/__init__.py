"""Terminal chat (`llmserve chat`): the same loop over an in-process engine or a remote server.

    options.py    flags -> ChatOptions, and the loading flags -> WorkerConfig mapping
    backends.py   the ChatBackend interface, GenerationParams, ReplyStats, ChatError
    local.py      LocalBackend: an LLMEngine stepped in the foreground
    client.py     OpenAIClient: list models, stream a chat completion (also used by test-message)
    remote.py     RemoteBackend: chat over /v1/chat/completions
    session.py    Conversation (history, trimming, save/load) and the `!!` commands
    interrupt.py  Ctrl-C during an answer stops it at a safe point
    ui.py         ChatUI interface, the simple style, make_ui()
    rich_ui.py    the rich style (markdown while streaming, prompt_toolkit input)
    loop.py       ChatLoop: read, command or answer, stream
    app.py        run_chat(options): wire it together
"""
