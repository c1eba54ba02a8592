"""Request translation details shared by the native adapters."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gateway.providers import ADAPTERS
from gateway.providers.base import Credential, UnsupportedFeature
from tally.errors import InvalidRequest

CREDS = {
    "anthropic": Credential(id=__import__("uuid").uuid4(), kind="anthropic", name="a",
                            base_url="http://a", api_key="k"),
    "gemini": Credential(id=__import__("uuid").uuid4(), kind="gemini", name="g",
                         base_url="http://g/v1beta", api_key="k"),
    "bedrock": Credential(id=__import__("uuid").uuid4(), kind="bedrock", name="b", base_url="http://b",
                          api_key=None, access_key_id="AKID", secret_access_key="s"),
}  # fmt: skip
PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 tiny").decode()


def _sent(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    request = ADAPTERS[kind].chat_request(CREDS[kind], "model-x", body, stream=False)
    payload: dict[str, Any] = json.loads(request.body)
    return payload


@pytest.mark.parametrize("kind", sorted(CREDS))
def test_neutral_values_of_missing_features_are_accepted(kind: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "n": 1,
        "logprobs": False,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logit_bias": {},
        "parallel_tool_calls": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "response_format": {"type": "text"},
        "seed": None,
    }
    assert _sent(kind, body)


@pytest.mark.parametrize("kind", sorted(CREDS))
def test_an_unknown_parameter_is_refused_by_name(kind: str) -> None:
    with pytest.raises(UnsupportedFeature, match="`prediction`"):
        _sent(
            kind,
            {"messages": [{"role": "user", "content": "x"}], "prediction": {"type": "content"}},
        )


@pytest.mark.parametrize("kind", sorted(CREDS))
def test_bad_input_is_a_precise_400(kind: str) -> None:
    bad_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    with pytest.raises(InvalidRequest, match="not valid base64"):
        _sent(kind, {"messages": [{"role": "user", "content": [bad_image]}]})
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        _sent(kind, {"messages": [{"role": "user", "content": "x"},
                                  {"role": "assistant", "tool_calls": [call]}]})  # fmt: skip
    with pytest.raises(InvalidRequest):
        _sent(kind, {"messages": []})


def test_pdf_files_become_each_providers_document() -> None:
    part = {"type": "file", "file": {"file_data": PDF, "filename": "Q3_report.pdf"}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    anthropic = _sent("anthropic", body)["messages"][0]["content"][0]
    assert anthropic["type"] == "document"
    assert anthropic["source"]["media_type"] == "application/pdf"
    gemini = _sent("gemini", body)["contents"][0]["parts"][0]
    assert gemini["inlineData"]["mimeType"] == "application/pdf"
    bedrock = _sent("bedrock", body)["messages"][0]["content"][0]["document"]
    assert (bedrock["format"], bedrock["name"]) == ("pdf", "Q3 report")


def test_anthropic_refuses_image_types_it_cannot_read() -> None:
    bmp = {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}
    with pytest.raises(UnsupportedFeature, match="image/bmp"):
        _sent("anthropic", {"messages": [{"role": "user", "content": [bmp]}]})


def test_consecutive_turns_merge_for_strictly_alternating_providers() -> None:
    body = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "content": "c"},
                         {"role": "developer", "content": "d"},
                         {"role": "user", "content": "e"}]}  # fmt: skip
    bedrock = _sent("bedrock", body)
    assert [m["role"] for m in bedrock["messages"]] == ["user", "assistant", "user"]
    assert bedrock["messages"][0]["content"] == [{"text": "a"}, {"text": "b"}]
    assert bedrock["system"] == [{"text": "d"}]
    gemini = _sent("gemini", body)
    assert [c["role"] for c in gemini["contents"]] == ["user", "model", "user"]


def test_anthropic_max_tokens_falls_back_when_nobody_gave_a_cap() -> None:
    assert (
        _sent("anthropic", {"messages": [{"role": "user", "content": "x"}]})["max_tokens"] == 4096
    )
    both = {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10,
            "max_tokens": 99}  # fmt: skip
    assert _sent("anthropic", both)["max_tokens"] == 10
    with pytest.raises(InvalidRequest):
        _sent("anthropic", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
