//! Tool calls and reasoning from the real model: Gemma 3 270M served with chat templates
//! (`tests/real_model/templates`) that give it a tool-call format and think tags. The calls and
//! the reasoning are the model's own output, parsed by llama-server and streamed by lucidd with
//! a receipt that covers them.

use crate::harness::{post, post_stream, post_text, templates};
use serde_json::{Value, json};

fn greedy(n: u32) -> Value {
    json!({"temperature": 0, "seed": 42, "num_predict": n})
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

/// One earlier exchange in Ollama's shape (a call with object arguments, its result named by
/// `tool_name`), then the question.
fn weather_chat() -> Value {
    json!([
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "sunny, 24 C", "tool_name": "get_weather"},
        {"role": "assistant", "content": "It is sunny in Rome, 24 C."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ])
}

#[tokio::test]
async fn capabilities_come_from_the_chat_template() {
    let capabilities = |show: &Value| -> Vec<String> {
        show["capabilities"]
            .as_array()
            .expect("capabilities")
            .iter()
            .map(|c| c.as_str().expect("str").to_string())
            .collect()
    };
    let (_, agent) = post("/api/show", json!({"model": "agent"})).await;
    assert!(capabilities(&agent).contains(&"tools".to_string()), "{agent}");
    assert!(!capabilities(&agent).contains(&"thinking".to_string()));
    let template = std::fs::read_to_string(templates().join("tools.jinja")).expect("template");
    assert_eq!(agent["template"], template, "/api/show gives the template in use");
    let (_, thinker) = post("/api/show", json!({"model": "thinker"})).await;
    assert!(capabilities(&thinker).contains(&"thinking".to_string()), "{thinker}");
    let (_, plain) = post("/api/show", json!({"model": "gemma3"})).await;
    assert_eq!(capabilities(&plain), ["completion", "embedding"]);

    // Without the template, the same model refuses both, as Ollama does.
    let (status, refused) = post(
        "/api/chat",
        json!({"model": "gemma3", "messages": weather_chat(), "tools": [weather_tool()]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(refused["error"].as_str().expect("error").ends_with("does not support tools"));
    let (status, refused) =
        post("/api/chat", json!({"model": "gemma3", "messages": weather_chat(), "think": true}))
            .await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"], "\"gemma3:latest\" does not support thinking");
    // `think: false`, which some clients send to every model, changes nothing on one that
    // cannot think.
    let plain = json!({"model": "gemma3", "stream": false, "options": greedy(12), "messages": [{"role": "user", "content": "Name a colour."}]});
    let mut off = plain.clone();
    off["think"] = json!(false);
    let ((s1, a1), (s2, a2)) = (post("/api/chat", plain).await, post("/api/chat", off).await);
    assert_eq!((s1, s2), (200, 200), "{a2}");
    assert_eq!(a1["message"]["content"], a2["message"]["content"]);
    assert!(a2["message"].get("thinking").is_none());
}

#[tokio::test]
async fn the_model_calls_a_tool_in_a_stream_that_verifies_offline() {
    let body = json!({"model": "agent", "messages": weather_chat(), "tools": [weather_tool()], "options": greedy(80)});
    let stream = post_text("/api/chat", &body).await;
    let lines: Vec<Value> =
        stream.lines().map(|l| serde_json::from_str(l).expect("NDJSON line")).collect();
    let with_calls: Vec<&Value> =
        lines.iter().filter(|l| l["message"].get("tool_calls").is_some()).collect();
    assert_eq!(with_calls.len(), 1, "the calls arrive whole, in one line: {stream}");
    let line = with_calls[0];
    assert_eq!(line["message"]["content"], "", "content is empty on the tool-call line");
    assert_eq!(line["done"], false);
    let calls = line["message"]["tool_calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}), "an object");
    assert!(calls[0]["id"].as_str().expect("id").starts_with("call_"));
    let last = lines.last().expect("final");
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop", "the model stopped after its call");
    assert_eq!(last["receipt_verified"], true);

    // The receipt covers the call: the saved stream verifies, and an edited argument does not.
    lucidd::receipt_check::check(&stream).expect("the saved stream verifies");
    let edited = stream.replace("\"city\":\"Paris\"", "\"city\":\"Lyon\"");
    assert_ne!(edited, stream);
    assert!(lucidd::receipt_check::check(&edited).is_err(), "an edited call is refused");

    // Not streamed: the same call (its id names this job, so it differs).
    let mut single = body.clone();
    single["stream"] = json!(false);
    let one = post_text("/api/chat", &single).await;
    let answer: Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(answer["message"]["tool_calls"][0]["function"], calls[0]["function"]);
    assert_eq!(answer["receipt_verified"], true);
    lucidd::receipt_check::check(&one).expect("the single answer verifies");
}

#[tokio::test]
async fn openai_clients_get_tool_calls_with_string_arguments() {
    let messages = json!([
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"},
        {"role": "assistant", "content": "It is sunny in Rome, 24 C."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]);
    let body = json!({"model": "agent", "messages": messages, "tools": [weather_tool()], "temperature": 0, "seed": 42, "max_tokens": 80});
    let (status, answer) = post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"].as_str().expect("a JSON string");
    assert_eq!(serde_json::from_str::<Value>(arguments).expect("JSON"), json!({"city": "Paris"}));

    let mut streaming = body;
    streaming["stream"] = json!(true);
    let stream = post_text("/v1/chat/completions", &streaming).await;
    let events: Vec<Value> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event"))
        .collect();
    let streamed: Vec<&Value> =
        events.iter().filter_map(|e| e.pointer("/choices/0/delta/tool_calls")).collect();
    assert_eq!(streamed.len(), 1, "whole calls in one delta: {stream}");
    assert_eq!(streamed[0][0]["function"]["name"], "get_weather");
    assert_eq!(streamed[0][0]["index"], 0);
    let finish =
        events.iter().filter_map(|e| e.pointer("/choices/0/finish_reason")).find(|f| !f.is_null());
    assert_eq!(finish, Some(&json!("tool_calls")));
    lucidd::receipt_check::check(&stream).expect("the SSE stream verifies offline");
}

/// An earlier exchange with its reasoning, so the small model follows the format.
fn arithmetic_chat() -> Value {
    json!([
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "thinking": "One plus one makes two.", "content": "1 + 1 = 2."},
        {"role": "user", "content": "What is 2 + 3?"},
    ])
}

fn joined(lines: &[Value], field: &str) -> String {
    lines.iter().filter_map(|l| l["message"][field].as_str()).collect()
}

#[tokio::test]
async fn a_thinking_model_reasons_apart_from_its_answer() {
    for think in [json!(true), Value::Null] {
        let mut body =
            json!({"model": "thinker", "messages": arithmetic_chat(), "options": greedy(24)});
        if !think.is_null() {
            body["think"] = think.clone();
        }
        let lines = post_stream("/api/chat", body.clone()).await;
        let thinking = joined(&lines, "thinking");
        let content = joined(&lines, "content");
        assert!(!thinking.trim().is_empty(), "think {think}: reasoning in `thinking`: {lines:?}");
        assert!(
            lines
                .iter()
                .filter(|l| l["message"].get("thinking").is_some())
                .all(|l| l["token_ids"].as_array().is_some_and(|ids| !ids.is_empty())),
            "the receipt commits to the reasoning's token ids: {lines:?}"
        );
        assert!(!content.contains("<think>") && !content.contains("</think>"), "{content:?}");
        assert!(!thinking.contains("<think>"), "{thinking:?}");
        assert_eq!(lines.last().expect("final")["receipt_verified"], true);

        body["stream"] = json!(false);
        let (status, one) = post("/api/chat", body).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["message"]["thinking"], thinking.as_str(), "the same reasoning, whole");
        assert_eq!(one["message"]["content"], content.as_str());
    }

    let off = post_stream("/api/chat", json!({"model": "thinker", "messages": arithmetic_chat(), "think": false, "options": greedy(12)})).await;
    assert!(off.iter().all(|l| l["message"].get("thinking").is_none()), "think false: {off:?}");
    assert!(!joined(&off, "content").trim().is_empty());

    // Generate puts it in `thinking` beside `response`.
    let (status, generated) = post("/api/generate", json!({"model": "thinker", "prompt": "What is 2 + 3?", "stream": false, "think": true, "options": greedy(16)})).await;
    assert_eq!(status, 200, "{generated}");
    assert!(generated["thinking"].as_str().is_some_and(|t| !t.is_empty()), "{generated}");
}

#[tokio::test]
async fn reasoning_reaches_openai_clients_and_verifies_offline() {
    let messages = json!([
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "reasoning": "One plus one makes two.", "content": "1 + 1 = 2."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]);
    let body = json!({"model": "thinker", "messages": messages, "temperature": 0, "seed": 42, "max_tokens": 24, "stream": true});
    let stream = post_text("/v1/chat/completions", &body).await;
    assert!(stream.contains("\"reasoning\":"), "reasoning in its own deltas: {stream}");
    lucidd::receipt_check::check(&stream).expect("verifies");
    let mut off = body;
    off["reasoning_effort"] = json!("none");
    off["stream"] = json!(false);
    let (status, answer) = post("/v1/chat/completions", off).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0]["message"].get("reasoning").is_none(), "{answer}");

    // Completions have no place for reasoning; it rides along in `reasoning` and verifies.
    for stream in [true, false] {
        let body = json!({"model": "thinker", "prompt": "What is 2 + 3?", "temperature": 0, "seed": 42, "max_tokens": 16, "stream": stream});
        let saved = post_text("/v1/completions", &body).await;
        assert!(saved.contains("\"reasoning\":"), "{saved}");
        lucidd::receipt_check::check(&saved).expect("a completion with reasoning verifies");
    }

    let ndjson = post_text("/api/chat", &json!({"model": "thinker", "messages": arithmetic_chat(), "think": true, "options": greedy(16)})).await;
    lucidd::receipt_check::check(&ndjson).expect("a stream with reasoning verifies");
    let edited = ndjson.replacen("\"thinking\":\"", "\"thinking\":\"X", 1);
    assert!(lucidd::receipt_check::check(&edited).is_err(), "edited reasoning is refused");
}
