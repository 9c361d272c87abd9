"""Trim OpenAI's published OpenAPI description to what an OpenAI-compatible server speaks:
chat completions and embeddings, with the components they reference, plus the stream chunk
and error bodies the tests check. The trimming itself is the OpenAI plugin's
(plugins/openai/tests/data/trim_spec.py), given these operations.

    python trim_spec.py /path/to/openai-openapi/openapi.yaml
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml

OPERATIONS = {"/chat/completions": ["post"], "/embeddings": ["post"]}
#: Schemas no operation references that the tests read.
SCHEMAS = ("CreateChatCompletionStreamResponse", "ErrorResponse")

if __name__ == "__main__":
    here = Path(__file__).resolve()
    source = here.parents[3] / "openai" / "tests" / "data" / "trim_spec.py"
    spec_of = importlib.util.spec_from_file_location("openai_trim_spec", source)
    assert spec_of is not None and spec_of.loader is not None
    openai_trim = importlib.util.module_from_spec(spec_of)
    spec_of.loader.exec_module(openai_trim)
    full = yaml.load(
        Path(sys.argv[1]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    # The named schemas ride along as a pseudo-operation's references, then it is removed.
    full["paths"]["/_schemas"] = {
        "get": {"x-refs": [{"$ref": f"#/components/schemas/{n}"} for n in SCHEMAS]}
    }
    openai_trim.OPERATIONS = {**OPERATIONS, "/_schemas": ["get"]}
    trimmed = openai_trim.trim(full)
    del trimmed["paths"]["/_schemas"]
    out = here.with_name("openai-openapi.chat-embeddings.json")
    out.write_text(json.dumps(trimmed, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
