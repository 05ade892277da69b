"""The official clients parse tool calls and reasoning that the real model produced (Gemma 3
270M through llama-server, with the test chat templates): the shapes lucidd sends must pass the
clients' own validation (pydantic in `ollama`, the OpenAI SDK's types, LangChain's messages)."""

import json

import ollama
import openai
from langchain_core.tools import tool
from langchain_ollama import ChatOllama

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# One earlier exchange, so the small model follows the template's tool-call format.
HISTORY = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "content": "sunny, 24 C", "tool_name": "get_weather"},
    {"role": "assistant", "content": "It is sunny in Rome, 24 C."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
GREEDY = {"temperature": 0, "seed": 42, "num_predict": 80}


def test_ollama_client_parses_the_models_tool_call(real_model_url):
    client = ollama.Client(host=real_model_url)
    assert "tools" in client.show("agent").capabilities
    reply = client.chat(model="agent", messages=HISTORY, tools=[WEATHER_TOOL], options=GREEDY)
    call = reply.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == {"city": "Paris"}
    assert reply.done_reason == "stop"
    streamed = [c for part in client.chat(model="agent", messages=HISTORY, tools=[WEATHER_TOOL], options=GREEDY, stream=True) for c in (part.message.tool_calls or [])]
    assert [c.function.name for c in streamed] == ["get_weather"]
    # The result goes back as a tool message, and the conversation continues.
    follow_up = HISTORY + [reply.message, {"role": "tool", "content": "rain, 12 C", "tool_name": "get_weather"}]
    after = client.chat(model="agent", messages=follow_up, tools=[WEATHER_TOOL], options={**GREEDY, "num_predict": 16})
    assert after.done


def test_ollama_client_reads_thinking(real_model_url):
    client = ollama.Client(host=real_model_url)
    history = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "thinking": "One plus one makes two.", "content": "1 + 1 = 2."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    reply = client.chat(model="thinker", messages=history, think=True, options={**GREEDY, "num_predict": 24})
    assert reply.message.thinking
    assert "<think>" not in reply.message.content
    off = client.chat(model="thinker", messages=history, think=False, options={**GREEDY, "num_predict": 12})
    assert not off.message.thinking


def test_openai_client_parses_the_models_tool_call(real_model_url):
    client = openai.OpenAI(base_url=f"{real_model_url}/v1", api_key="unused")
    messages = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"},
        {"role": "assistant", "content": "It is sunny in Rome, 24 C."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    reply = client.chat.completions.create(model="agent", messages=messages, tools=[WEATHER_TOOL], temperature=0, seed=42, max_tokens=80)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    stream = client.chat.completions.create(model="agent", messages=messages, tools=[WEATHER_TOOL], temperature=0, seed=42, max_tokens=80, stream=True)
    deltas = [c for chunk in stream if chunk.choices for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["get_weather"]


def test_langchain_binds_tools_and_gets_the_call(real_model_url):
    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city"""
        return "sunny"

    chat = ChatOllama(model="agent", base_url=real_model_url, temperature=0, seed=42, num_predict=80, validate_model_on_init=True)
    # LangChain's own message types name calls and results by id.
    history = [
        ("human", "What is the weather in Rome?"),
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "sunny, 24 C", "tool_call_id": "call_1", "name": "get_weather"},
        ("ai", "It is sunny in Rome, 24 C."),
        ("human", "What is the weather in Paris?"),
    ]
    reply = chat.bind_tools([get_weather]).invoke(history)
    assert reply.tool_calls[0]["name"] == "get_weather"
    assert reply.tool_calls[0]["args"] == {"city": "Paris"}
