"""``Upstream.url``: a fixed path's URL, parsed once."""

import httpx

from apimodels.providers.types import Upstream


def test_url_is_base_plus_path_parsed_once() -> None:
    upstream = Upstream("acme", "https://api.acme.test/v1", "k")
    url = upstream.url("/chat/completions")
    assert url == httpx.URL("https://api.acme.test/v1/chat/completions")
    assert upstream.url("/chat/completions") is url  # the same parsed object
    assert str(httpx.Request("POST", url).url) == "https://api.acme.test/v1/chat/completions"


def test_url_cache_is_bounded_and_hidden() -> None:
    upstream = Upstream("acme", "https://api.acme.test/v1", "secret-key")
    urls = [upstream.url(f"/predictions/{i}") for i in range(300)]
    assert str(urls[299]).endswith("/predictions/299")
    assert upstream.url("/predictions/299") is not urls[299]  # past the bound: not kept
    assert "secret-key" not in repr(upstream) and "_urls" not in repr(upstream)
    assert upstream == Upstream("acme", "https://api.acme.test/v1", "secret-key")
