"""apimodels: a self-hostable unified AI model API, every provider a pluggy plugin.

What a plugin author imports lives here; everything else is the core's own business.
"""

from .catalog import ModelConfig, Pricing
from .errors import (
    APIError,
    AuthenticationError,
    InsufficientCredits,
    InvalidRequest,
    ModelRetired,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from .hookspecs import hookimpl
from .providers.types import (
    AudioStream,
    Job,
    Output,
    ProviderSpec,
    StreamEvent,
    Upstream,
    Usage,
    Verdict,
    Voice,
)
from .schemas import (
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    Modality,
    SpeechRequest,
    TranscriptionRequest,
    UnifiedRequest,
)

__version__ = "0.1.0"

#: The version of the plugin interface (the hooks, their arguments and the types above). A
#: plugin declares the versions it supports as ``apimodels_hook_api = ">=2,<3"`` in its
#: entry-point module; see docs/plugins.md, "Compatibility". 1: everything before it was
#: numbered; 2: stream framings, errors from any answer, provider instances (additive, so
#: plugins written for 1 still load).
HOOK_API_VERSION = 2

__all__ = [
    "HOOK_API_VERSION",
    "APIError",
    "AudioStream",
    "AuthenticationError",
    "ChatRequest",
    "EmbeddingRequest",
    "ImageRequest",
    "InsufficientCredits",
    "InvalidRequest",
    "Job",
    "Modality",
    "ModelConfig",
    "ModelRetired",
    "NotFound",
    "Output",
    "PayloadTooLarge",
    "PermissionDenied",
    "Pricing",
    "ProviderSpec",
    "RateLimited",
    "ServiceUnavailable",
    "SpeechRequest",
    "StreamEvent",
    "TranscriptionRequest",
    "UnifiedRequest",
    "Upstream",
    "UpstreamError",
    "UpstreamOverloaded",
    "UpstreamTimeout",
    "Usage",
    "Verdict",
    "Voice",
    "hookimpl",
]
