"""The base of every user-facing error: a bad input or a missing piece the user can fix.

The CLI prints these as one line (`error: …`, exit 2) and a server sends them as an error
event; anything else is a bug and keeps its traceback. `audio/` imports nothing of ours, so its
`AudioError` stands beside this base rather than under it (`USER_ERRORS` names both).
"""

from __future__ import annotations

from audio.wavio import AudioError


class VoiceError(Exception):
    """A user-facing error; its message says what to change."""


USER_ERRORS: tuple[type[Exception], ...] = (VoiceError, AudioError)
