"""The browser UI served by the same process: chat page, arena, votes and leaderboard.

`routes.py` mounts the pages, the static files and two small JSON endpoints; `votes.py` owns the
votes file; `leaderboard.py` turns votes into ratings; `battles.py`, `delivery.py` and
`anonymity.py` keep an arena battle's models hidden until its vote. The pages are plain HTML/CSS/JS under
`static/` that talk to the server's own `/v1` API; nothing is built or fetched from elsewhere.
"""
