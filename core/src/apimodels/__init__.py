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

__all__ = [
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
