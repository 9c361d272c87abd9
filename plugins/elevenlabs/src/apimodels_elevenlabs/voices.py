"""ElevenLabs' premade voices: the ones every ElevenLabs account can use.

Listed here, not fetched, so that the gateway knows them at startup without an upstream
call and checks a request's voice with a dict lookup. Voices of the operator's own
account (cloned, designed, from the library) are added in registry.toml under
``[providers.elevenlabs.settings.voices]`` as ``NAME = "VOICE_ID"``.
"""

from __future__ import annotations

#: (voice id, name, accent, gender) of the premade voices, as GET /v1/voices lists them.
PREMADE: tuple[tuple[str, str, str, str], ...] = (
    ("9BWtsMINqrJLrRacOk9x", "Aria", "American", "female"),
    ("CwhRBWXzGAHq8TQ4Fs17", "Roger", "American", "male"),
    ("EXAVITQu4vr4xnSDxMaL", "Sarah", "American", "female"),
    ("FGY2WhTYpPnrIDTdsKH5", "Laura", "American", "female"),
    ("IKne3meq5aSn9XLyUdCD", "Charlie", "Australian", "male"),
    ("JBFqnCBsd6RMkjVDRZzb", "George", "British", "male"),
    ("N2lVS1w4EtoT3dr4eOWO", "Callum", "Transatlantic", "male"),
    ("SAz9YHcvj6GT2YYXdXww", "River", "American", "neutral"),
    ("TX3LPaxmHKxFdv7VOQHJ", "Liam", "American", "male"),
    ("XB0fDUnXU5powFXDhCwa", "Charlotte", "Swedish", "female"),
    ("Xb7hH8MSUJpSbSDYk0k2", "Alice", "British", "female"),
    ("XrExE9yKIg1WjnnlVkGX", "Matilda", "American", "female"),
    ("bIHbv24MWmeRgasZH58o", "Will", "American", "male"),
    ("cgSgspJ2msm6clMCkdW9", "Jessica", "American", "female"),
    ("cjVigY5qzO86Huf0OWal", "Eric", "American", "male"),
    ("iP95p4xoKVk53GoZ742B", "Chris", "American", "male"),
    ("nPczCjzI2devNBz1zQrb", "Brian", "American", "male"),
    ("onwK4e9ZLuTAKqWW03F9", "Daniel", "British", "male"),
    ("pFZP5JQG7iQjIQuC4Bku", "Lily", "British", "female"),
    ("pqHfZKP75CyOlORwtUq8", "Bill", "American", "male"),
)
