"""The Replicate models the simulator knows, with their real input schemas (trimmed to the
main fields), as published for each model on replicate.com (its "API" tab, i.e. its
``latest_version.openapi_schema``), read 2026-11-25 through copies of those pages:

- black-forest-labs/flux-schnell: replicate.com/black-forest-labs/flux-schnell;
- google/veo-3.1-fast: the api.core.today listing of the Replicate model (its `duration`
  there reads "5 or 8"; Google's Veo 3.1 API, and every other listing found, say 4, 6 or 8,
  which is what the simulator takes);
- google/veo-3.1: the api.core.today listing of the Replicate model (read 2026-12-06): Veo
  3.1 Fast's fields, 1080p by default, and 1 to 3 ``reference_images``;
- minimax/speech-2.6-turbo: replicate.com/minimax/speech-2.6-turbo and the identical schema
  of minimax/speech-2.8-turbo's version page;
- meta/meta-llama-3.1-405b-instruct: replicate.com/meta/meta-llama-3.1-405b-instruct
  (the bounds of min_tokens / max_tokens / temperature are the simulator's).

Each is an official model, so it runs by ``owner/name`` (``version`` reads ``"hidden"``), and
also has a version id, so it runs by ``owner/name:version`` or a bare version id too.
``kind`` says what the simulator makes: ``image`` (PNG files), ``video`` (MP4 files),
``audio`` (MP3, WAV, FLAC or raw PCM) or ``text`` (a list of string tokens).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["image", "video", "audio", "text"]


@dataclass(frozen=True)
class SimModel:
    """A model of the simulator: its name, what it makes and its input schema."""

    owner: str
    name: str
    kind: Kind
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    #: the input field whose text the simulator scans for failure markers
    text_field: str = "prompt"
    version: str = field(init=False)

    def __post_init__(self) -> None:
        # A stable 64-hex version id, like Replicate's (a digest of the model's name).
        digest = hashlib.sha256(f"{self.owner}/{self.name}".encode()).hexdigest()
        object.__setattr__(self, "version", digest)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    def openapi_schema(self) -> dict[str, Any]:
        """The version's OpenAPI schema, in the shape Cog publishes (Input and Output under
        ``components.schemas``)."""
        return {
            "openapi": "3.0.2",
            "info": {"title": "Cog", "version": "0.1.0"},
            "paths": {},
            "components": {"schemas": {"Input": self.input_schema, "Output": self.output_schema}},
        }


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, default: int, low: int, high: int) -> dict[str, Any]:
    return {
        "type": "integer",
        "description": description,
        "default": default,
        "minimum": low,
        "maximum": high,
    }


def _number(description: str, default: float, low: float, high: float) -> dict[str, Any]:
    return {
        "type": "number",
        "description": description,
        "default": default,
        "minimum": low,
        "maximum": high,
    }


def _boolean(description: str, default: bool) -> dict[str, Any]:
    return {"type": "boolean", "description": description, "default": default}


def _input(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "title": "Input", "properties": properties, "required": required}


_URI = {"type": "string", "format": "uri", "title": "Output"}

FLUX_SCHNELL = SimModel(
    "black-forest-labs",
    "flux-schnell",
    "image",
    "The fastest image generation model tailored for local development and personal use",
    _input(
        {
            "prompt": _string("Prompt for generated image"),
            "aspect_ratio": _string(
                "Aspect ratio for the generated image",
                enum=[
                    "1:1",
                    "16:9",
                    "21:9",
                    "3:2",
                    "2:3",
                    "4:5",
                    "5:4",
                    "3:4",
                    "4:3",
                    "9:16",
                    "9:21",
                ],
                default="1:1",
            ),
            "num_outputs": _integer("Number of outputs to generate", 1, 1, 4),
            "num_inference_steps": _integer(
                "Number of denoising steps. 4 is recommended, and lower number of steps produce lower quality outputs, faster.",
                4,
                1,
                4,
            ),
            "seed": {
                "type": "integer",
                "description": "Random seed. Set for reproducible generation",
            },
            "output_format": _string(
                "Format of the output images", enum=["webp", "jpg", "png"], default="webp"
            ),
            "output_quality": _integer(
                "Quality when saving the output images, from 0 to 100. 100 is best quality, 0 is lowest quality. Not relevant for .png outputs",
                80,
                0,
                100,
            ),
            "disable_safety_checker": _boolean(
                "Disable safety checker for generated images.", False
            ),
            "go_fast": _boolean(
                "Run faster predictions with model optimized for speed (currently fp8 quantized); disable to run in original bf16.",
                True,
            ),
            "megapixels": _string(
                "Approximate number of megapixels for generated image",
                enum=["1", "0.25"],
                default="1",
            ),
        },
        ["prompt"],
    ),
    {"type": "array", "items": _URI, "title": "Output"},
)

VEO_31_FAST = SimModel(
    "google",
    "veo-3.1-fast",
    "video",
    "Google's improved version of Veo 3 Fast with higher-fidelity video, context-aware audio generation, and last frame support",
    _input(
        {
            "prompt": _string("Text prompt for video generation"),
            "duration": {
                "type": "integer",
                "description": "Video duration in seconds",
                "enum": [4, 6, 8],
                "default": 8,
            },
            "resolution": _string(
                "Resolution of the generated video", enum=["720p", "1080p"], default="720p"
            ),
            "aspect_ratio": _string("Video aspect ratio", enum=["16:9", "9:16"], default="16:9"),
            "generate_audio": _boolean("Generate audio with the video", True),
            "negative_prompt": _string("Description of what to exclude from the generated video"),
            "image": _string(
                "Input image to start generating from. Ideal images are 16:9 or 9:16 and 1280x720 or 720x1280",
                format="uri",
            ),
            "last_frame": _string(
                "Ending image for interpolation. When provided with an input image, creates a transition between the two images.",
                format="uri",
            ),
            "seed": {"type": "integer", "description": "Random seed. Omit for random generations"},
        },
        ["prompt"],
    ),
    _URI,
)

VEO_31 = SimModel(
    "google",
    "veo-3.1",
    "video",
    "Google's state-of-the-art video generation model with synchronized native audio, reference image support (up to 3 images), and last frame interpolation",
    _input(
        {
            **VEO_31_FAST.input_schema["properties"],
            "resolution": _string(
                "Resolution of the generated video", enum=["720p", "1080p"], default="1080p"
            ),
            "reference_images": {
                "type": "array",
                "items": {"type": "string", "format": "uri"},
                "description": "1-3 reference images for subject-consistent generation. Only works with 16:9 aspect ratio and 8-second duration",
            },
        },
        ["prompt"],
    ),
    _URI,
)

SPEECH_26_TURBO = SimModel(
    "minimax",
    "speech-2.6-turbo",
    "audio",
    "Low-latency MiniMax Speech 2.6 Turbo: multilingual, emotional text-to-speech with 300+ voices",
    _input(
        {
            "text": _string(
                "Text to narrate (max 10,000 characters). Use markers like <#0.5#> to insert pauses in seconds.",
                maxLength=10000,
            ),
            "voice_id": _string(
                "Voice to synthesize. Pick any MiniMax system voice or a voice_id returned by https://replicate.com/minimax/voice-cloning.",
                default="Wise_Woman",
            ),
            "speed": _number(
                "Speech speed multiplier (0.5-2.0). Lower is slower, higher is faster.", 1, 0.5, 2
            ),
            "volume": _number(
                "Relative loudness. 1.0 is default MiniMax gain. Range 0-10.", 1, 0, 10
            ),
            "pitch": _integer("Semitone offset applied to the voice (-12 to +12).", 0, -12, 12),
            "emotion": _string(
                "Desired delivery style. Use auto to let MiniMax choose, or pick a specific emotion.",
                enum=[
                    "auto",
                    "happy",
                    "sad",
                    "angry",
                    "fearful",
                    "disgusted",
                    "surprised",
                    "calm",
                    "fluent",
                    "neutral",
                ],
                default="auto",
            ),
            "sample_rate": {
                "type": "integer",
                "description": "Audio sample rate in Hz.",
                "enum": [8000, 16000, 22050, 24000, 32000, 44100],
                "default": 32000,
            },
            "bitrate": {
                "type": "integer",
                "description": "MP3 bitrate in bits per second. Only used when audio_format is mp3.",
                "enum": [32000, 64000, 128000, 256000],
                "default": 128000,
            },
            "audio_format": _string(
                "File format for the generated audio. Choose mp3 for general use, wav/flac for lossless, or pcm for raw bytes.",
                enum=["mp3", "wav", "flac", "pcm"],
                default="mp3",
            ),
            "channel": _string(
                "mono for 1 channel (default), stereo for 2 channels.",
                enum=["mono", "stereo"],
                default="mono",
            ),
            "english_normalization": _boolean(
                "Improve number/date reading for English text (adds a small amount of latency).",
                False,
            ),
            "subtitle_enable": _boolean(
                "Return MiniMax subtitle metadata with sentence timestamps (non-streaming only).",
                False,
            ),
            "language_boost": _string(
                "Optional language hint. Choose Automatic to let MiniMax detect the language, or pick a specific locale.",
                default="None",
            ),
        },
        ["text"],
    ),
    _URI,
    text_field="text",
)

LLAMA_31_405B = SimModel(
    "meta",
    "meta-llama-3.1-405b-instruct",
    "text",
    "Meta's flagship 405 billion parameter language model, fine-tuned for chat completions",
    _input(
        {
            "prompt": _string("Prompt", default=""),
            "system_prompt": _string(
                "System prompt to send to the model. This is prepended to the prompt and helps guide system behavior. Ignored for non-chat models.",
                default="You are a helpful assistant.",
            ),
            "min_tokens": _integer(
                "The minimum number of tokens the model should generate as output.", 0, 0, 4096
            ),
            "max_tokens": _integer(
                "The maximum number of tokens the model should generate as output.", 512, 1, 4096
            ),
            "temperature": _number(
                "The value used to modulate the next token probabilities.", 0.6, 0, 5
            ),
            "top_p": _number(
                "A probability threshold for generating the output. If < 1.0, only keep the top tokens with cumulative probability >= top_p (nucleus filtering).",
                0.9,
                0,
                1,
            ),
            "top_k": {
                "type": "integer",
                "description": "The number of highest probability tokens to consider for generating the output. If > 0, only keep the top k tokens with highest probability (top-k filtering).",
                "default": 50,
            },
            "presence_penalty": {"type": "number", "description": "Presence penalty", "default": 0},
            "frequency_penalty": {
                "type": "number",
                "description": "Frequency penalty",
                "default": 0,
            },
            "stop_sequences": _string(
                "A comma-separated list of sequences to stop generation at. For example, '<end>,<stop>' will stop generation at the first instance of 'end' or '<stop>'."
            ),
            "prompt_template": _string(
                "A template to format the prompt with. If not provided, the default prompt template will be used."
            ),
        },
        [],
    ),
    {
        "type": "array",
        "items": {"type": "string"},
        "title": "Output",
        "x-cog-array-type": "iterator",
    },
)

#: Every model the simulator knows, by ``owner/name``.
MODELS: dict[str, SimModel] = {
    m.ref: m for m in (FLUX_SCHNELL, VEO_31_FAST, VEO_31, SPEECH_26_TURBO, LLAMA_31_405B)
}
#: The same models by version id.
VERSIONS: dict[str, SimModel] = {m.version: m for m in MODELS.values()}
