"""The official `ollama` Python client and the `openai` client, unchanged, against lucidd."""

import base64
import hashlib
import math
import tempfile

import httpx
import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def client(lucidd_url):
    return ollama.Client(host=lucidd_url)


@pytest.fixture(scope="module")
def oai(lucidd_url):
    return openai.OpenAI(base_url=f"{lucidd_url}/v1", api_key="unused-by-lucidd")


def test_version(lucidd_url):
    # The Python client has no version(); clients call the endpoint directly.
    version = httpx.get(f"{lucidd_url}/api/version").json()["version"]
    assert all(part.isdigit() for part in version.split("."))


def test_list_show_ps(client):
    models = client.list().models
    assert "echo:latest" in [m.model for m in models]
    show = client.show("echo")
    assert show.modelinfo["general.architecture"] == "echo"
    assert "completion" in show.capabilities
    client.generate(model="echo", prompt="warm up")
    running = client.ps().models
    assert running and running[0].name == "echo:latest"
    assert running[0].expires_at is not None


def test_chat_not_streaming(client):
    response = client.chat(model="echo", messages=[{"role": "user", "content": "hi there"}])
    assert response.message.role == "assistant"
    assert response.message.content == "hi there"
    assert response.done and response.done_reason == "stop"
    assert response.eval_count == 2


def test_chat_streaming(client):
    parts = list(client.chat(model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True))
    assert "".join(p.message.content for p in parts) == "one two three"
    assert len(parts) == 4
    assert parts[-1].done and not parts[0].done


def test_generate_streaming_and_not(client):
    assert client.generate(model="echo", prompt="say this").response == "say this"
    parts = list(client.generate(model="echo", prompt="say this", stream=True, options={"num_predict": 1}))
    assert "".join(p.response for p in parts) == "say"
    assert parts[-1].done_reason == "length"


def test_embed_and_embeddings(client):
    vectors = client.embed(model="echo", input=["a", "b"]).embeddings
    assert len(vectors) == 2
    assert abs(math.sqrt(sum(x * x for x in vectors[0])) - 1) < 1e-4
    single = client.embeddings(model="echo", prompt="a").embedding
    assert len(single) == len(vectors[0])


def test_pull_copy_create_delete(client):
    progress = list(client.pull("echo", stream=True))
    assert progress[-1].status == "success"
    assert client.copy("echo", "echo-copy").status == "success"
    assert client.create(model="kind", from_="echo", system="Be kind.").status == "success"
    assert 'SYSTEM "Be kind."' in client.show("kind").modelfile
    assert client.delete("echo-copy").status == "success"
    assert client.delete("kind").status == "success"


def test_create_blob(client):
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"blob bytes")
        f.flush()
        digest = client.create_blob(f.name)
    assert digest == "sha256:" + hashlib.sha256(b"blob bytes").hexdigest()


def test_unknown_model_raises_response_error(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404
    assert "no-such-model" in err.value.error


def test_openai_chat(oai):
    completion = oai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello there"}])
    assert completion.choices[0].message.content == "hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 2


def test_openai_chat_streaming(oai):
    stream = oai.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-1].usage.completion_tokens == 3


def test_openai_completions_embeddings_models(oai):
    assert oai.completions.create(model="echo", prompt="say this").choices[0].text == "say this"
    embedding = oai.embeddings.create(model="echo", input=["a", "b"])
    assert len(embedding.data) == 2
    base64_embedding = oai.embeddings.create(model="echo", input="a", encoding_format="base64")
    packed = base64.b64decode(base64_embedding.data[0].embedding)
    assert len(packed) == 4 * len(embedding.data[0].embedding)
    assert "echo:latest" in [m.id for m in oai.models.list()]
    assert oai.models.retrieve("echo:latest").id == "echo:latest"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
