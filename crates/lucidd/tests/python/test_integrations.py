"""Higher-level integrations against lucidd: LangChain for real, and the exact requests that
Open WebUI and Continue send (both are large applications; their HTTP calls are reproduced
here as they make them)."""

import json
import re

import httpx
import pytest
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM


def test_langchain_chat_llm_and_embeddings(lucidd_url):
    chat = ChatOllama(model="echo", base_url=lucidd_url, validate_model_on_init=True)
    reply = chat.invoke("hi there")
    assert reply.content == "hi there"
    assert reply.usage_metadata["output_tokens"] == 2
    assert reply.response_metadata["done_reason"] == "stop"
    assert OllamaLLM(model="echo", base_url=lucidd_url).invoke("say this") == "say this"
    vector = OllamaEmbeddings(model="echo", base_url=lucidd_url).embed_query("cat")
    assert len(vector) > 0


def test_langchain_validation_refuses_an_unknown_model(lucidd_url):
    with pytest.raises(Exception):
        ChatOllama(model="no-such-model", base_url=lucidd_url, validate_model_on_init=True)


def test_open_webui_requests(lucidd_url):
    with httpx.Client(base_url=lucidd_url) as http:
        version = http.get("/api/version").json()["version"]
        [int(part) for part in version.lstrip("v").split("-")[0].split(".")]
        models = {m["model"]: m for m in http.get("/api/tags").json()["models"]}
        assert "echo:latest" in models
        with http.stream("POST", "/api/chat", json={"model": "echo:latest", "messages": [{"role": "user", "content": "proxied"}], "stream": True}) as r:
            lines = [json.loads(line) for line in r.iter_lines()]
        assert "".join(l["message"]["content"] for l in lines) == "proxied"
        running = {m["name"]: m["expires_at"] for m in http.get("/api/ps").json()["models"]}
        assert "echo:latest" in running
        # The "unload" button.
        unload = http.post("/api/generate", json={"model": "echo:latest", "keep_alive": 0, "prompt": ""}).json()
        assert unload["done_reason"] == "unload"
        assert "echo:latest" not in {m["name"] for m in http.get("/api/ps").json()["models"]}


def test_continue_requests(lucidd_url):
    with httpx.Client(base_url=lucidd_url) as http:
        http.post("/api/create", json={"model": "coder", "from": "echo", "parameters": {"num_ctx": 4096, "stop": ["<EOT>"]}, "stream": False}).raise_for_status()
        show = http.post("/api/show", json={"name": "coder"}).json()
        params = {}
        for line in show["parameters"].splitlines():
            key, value = re.match(r"^(\S+)\s+(.*)$", line).groups()
            params.setdefault(key, []).append(json.loads(value))
        assert params["num_ctx"] == [4096]
        assert params["stop"] == ["<EOT>"]
        # Autocomplete: raw generate, streamed, keep_alive in seconds; an `error` key would throw.
        with http.stream("POST", "/api/generate", json={"model": "coder", "prompt": "def add(a, b):", "raw": True, "keep_alive": 1800, "options": {"num_predict": 2}}) as r:
            lines = [json.loads(line) for line in r.iter_lines()]
        assert not any("error" in l for l in lines)
        assert lines[-1]["done"] is True
        assert "".join(l.get("response", "") for l in lines) == "def add(a,"
