"""apimodels provider plugin for Replicate: image, video, audio and language models run as
predictions (created by official model or by version, polled or pushed by signed webhooks).

The simulator of Replicate's HTTP API is ``apimodels_replicate.simulator``.
"""
