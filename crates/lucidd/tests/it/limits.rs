//! Hard limits on what HTTP clients can make the daemon hold: header size and count, slow
//! headers and bodies, connections at once, requests per client. Each flood leaves the daemon
//! serving everyone else.

use crate::harness::Daemon;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (or the deadline passes); returns what came.
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                panic!("the server kept the connection open: {}", String::from_utf8_lossy(&out))
            }
        }
    }
}

async fn still_serves(d: &Daemon) {
    let (status, body) = d.post_json("/api/chat", json!({"model": "echo", "messages": [{"role": "user", "content": "ok"}], "stream": false})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let d = Daemon::start().await;
    let mut request = d.client.get(d.url("/api/version"));
    for i in 0..150 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let status = request.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    assert!(status == 431 || status == 0, "150 headers: {status}");
    let huge = "a".repeat(100 * 1024);
    let status = d
        .client
        .get(d.url("/api/version"))
        .header("x-huge", huge)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert!(status == 431 || status == 0, "100 KiB of headers: {status}");
    still_serves(&d).await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_cut_off() {
    let d = Daemon::start_with(|args| args.header_timeout = 0.3).await;
    let mut idle = TcpStream::connect(d.addr).await.expect("connect");
    let mut slow = TcpStream::connect(d.addr).await.expect("connect");
    slow.write_all(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("partial headers");
    let started = Instant::now();
    read_until_closed(&mut idle).await;
    read_until_closed(&mut slow).await;
    assert!(started.elapsed() < DEADLINE);
    still_serves(&d).await;
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    let d = Daemon::start_with(|args| args.body_timeout = 0.3).await;
    let mut tcp = TcpStream::connect(d.addr).await.expect("connect");
    tcp.write_all(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":").await.expect("write");
    let answer = read_until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    still_serves(&d).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_freed_slots_are_reused() {
    let d = Daemon::start_with(|args| {
        args.max_connections = 2;
        args.header_timeout = 60.0;
    })
    .await;
    let held: Vec<TcpStream> =
        futures::future::join_all((0..2).map(|_| TcpStream::connect(d.addr)))
            .await
            .into_iter()
            .map(|c| c.expect("connect"))
            .collect();
    // Give the server the two connections before the third arrives (poll: a third is closed).
    let until = Instant::now() + DEADLINE;
    loop {
        let mut extra = TcpStream::connect(d.addr).await.expect("connect");
        extra.write_all(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.ok();
        let answer = read_until_closed(&mut extra).await;
        if answer.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "a third connection was served: {answer}");
    }
    drop(held);
    let until = Instant::now() + DEADLINE;
    while d.client.get(d.url("/api/version")).send().await.is_err() {
        assert!(Instant::now() < until, "freed slots were not reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flooding_client_gets_429_and_others_are_served() {
    let d = Daemon::start_with(|args| args.client_rate = 5.0).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
            .build()
            .expect("client")
    };
    let (flood, other) = (from("127.0.0.2"), from("127.0.0.3"));
    let mut refused = None;
    for _ in 0..50 {
        let response = flood.get(d.url("/api/version")).send().await.expect("send");
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("the flood was limited");
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.expect("json");
    assert!(
        body["error"].as_str().expect("error").contains("too many requests from 127.0.0.2"),
        "{body}"
    );
    let response = other.get(d.url("/api/version")).send().await.expect("send");
    assert_eq!(response.status(), 200, "another client is still served");
}

type Body = Box<dyn Fn(usize) -> serde_json::Value + 'static>;

/// Each count limit: the path, a body with `n` of the counted things, and the limit.
fn count_cases() -> Vec<(&'static str, Body, usize)> {
    use lucidd::api::limits::{
        MAX_CONTEXT_TOKENS, MAX_EMBED_INPUTS, MAX_IMAGES, MAX_MESSAGES, MAX_STOP_STRINGS, MAX_TOOLS,
    };
    let user = || json!({"role": "user", "content": "hi"});
    let image =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"not really a png");
    vec![
        (
            "/api/embed",
            Box::new(|n| json!({"model": "echo", "input": vec!["a"; n]})),
            MAX_EMBED_INPUTS,
        ),
        (
            "/v1/embeddings",
            Box::new(|n| json!({"model": "echo", "input": vec!["a"; n]})),
            MAX_EMBED_INPUTS,
        ),
        (
            "/api/chat",
            Box::new(
                move |n| json!({"model": "echo", "stream": false, "messages": vec![user(); n]}),
            ),
            MAX_MESSAGES,
        ),
        (
            "/v1/chat/completions",
            Box::new(move |n| json!({"model": "echo", "messages": vec![user(); n]})),
            MAX_MESSAGES,
        ),
        (
            "/api/generate",
            Box::new(
                |n| json!({"model": "echo", "stream": false, "prompt": "hi", "options": {"stop": (0..n).map(|i| format!("stop{i}")).collect::<Vec<_>>()}}),
            ),
            MAX_STOP_STRINGS,
        ),
        (
            "/api/chat",
            Box::new(
                move |n| json!({"model": "echo", "stream": false, "messages": [user()], "tools": (0..n).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect::<Vec<_>>()}),
            ),
            MAX_TOOLS,
        ),
        (
            "/api/generate",
            Box::new(
                move |n| json!({"model": "echo", "stream": false, "prompt": "hi", "images": vec![image.clone(); n]}),
            ),
            MAX_IMAGES,
        ),
        (
            "/api/generate",
            Box::new(
                |n| json!({"model": "echo", "stream": false, "prompt": "hi", "context": vec![65; n]}),
            ),
            MAX_CONTEXT_TOKENS,
        ),
    ]
}

/// Whether an answer refused the request for a count over a limit.
fn refused_for_count(status: u16, answer: &serde_json::Value) -> bool {
    let message = answer["error"].as_str().or_else(|| answer["error"]["message"].as_str());
    status == 400 && message.is_some_and(|m| m.contains("too many"))
}

/// Class: a request's cost is bounded by counts as well as bytes. One past each count limit is
/// refused with a 400 that names it; at the limit the request is served.
#[tokio::test]
async fn count_limits_refuse_one_past_each_and_serve_at_each() {
    let d = Daemon::start().await;
    for (path, body, max) in &count_cases() {
        let (status, error) = d.post_json(path, body(max + 1)).await;
        assert!(refused_for_count(status, &error), "{path} with {} items: {error}", max + 1);
        assert!(error.to_string().contains(&max.to_string()), "{path}: names the limit: {error}");
        // At the limit, the count itself is not the problem (echo cannot call tools or see
        // images, and its own context is smaller, so those answer with their own 400).
        let (status, answer) = d.post_json(path, body(*max)).await;
        assert!(!refused_for_count(status, &answer), "{path} at {max}: {answer}");
    }
    // The review's case: 80 000 stop strings once kept the async threads busy for a minute.
    let stops: Vec<String> = (0..80_000).map(|i| format!("s{i}")).collect();
    let body = json!({"model": "echo", "prompt": "hi", "options": {"stop": stops}});
    assert_eq!(d.post_json("/api/generate", body).await.0, 400);
    d.assert_still_serving().await;
}

/// The same as a property: for any count of any counted thing, the request is refused for its
/// count exactly when the count is over the limit.
#[test]
fn any_count_is_refused_exactly_when_over_its_limit() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let d = runtime.block_on(Daemon::start());
    let cases = count_cases();
    let config = ProptestConfig {
        cases: 96,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xc0_u64 << 32 | 0x0075),
        ..ProptestConfig::default()
    };
    proptest!(config, |(which in 0usize..8, fraction in 0.0f64..2.0)| {
        let (path, body, max) = &cases[which];
        let n = (*max as f64 * fraction) as usize;
        let (status, answer) = runtime.block_on(d.post_json(path, body(n)));
        prop_assert_eq!(refused_for_count(status, &answer), n > *max, "{} with {}: {}", path, n, answer);
    });
}
