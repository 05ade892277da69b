//! Spot checks across processes with the real chat model: node A holds SmolLM2-135M-Instruct
//! and sends its
//! requests to node B (`X-Lucid-Route: peer`), which serves the same file — honestly, or with
//! one of the test build's lies. Every lying answer's receipt verifies and binds; only A's
//! re-scoring on its own copy catches it: a 502 naming the spot check, or (with
//! `X-Lucid-Accept-Unverified`) the answer marked unverified with the failed check in its last
//! line. Honest answers, greedy and sampled, pass.

use crate::harness::chat_model_file;
use crate::nodes::{Node, peer_id};
use serde_json::{Value, json};

/// A node serving SmolLM2 from its own model directory, with `extra` arguments.
pub async fn chat_node(dir: tempfile::TempDir, extra: &[&str]) -> Node {
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::os::unix::fs::symlink(chat_model_file(), models.join("smollm2.gguf")).expect("link");
    crate::harness::llama_node(dir, "models", extra).await
}

/// B (lying as `lie` says, or honest) serving A, which holds the same model. `lie` is one of
/// the test build's faults, or `crude-quant`: the other-model liar running a cruder
/// quantization of the same model.
pub async fn pair(lie: Option<&str>) -> (Node, Node) {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let mut extra = vec!["--allow-signer", &a_id];
    if let Some(lie) = lie {
        extra.extend(["--test-fault", if lie == "crude-quant" { "other-model" } else { lie }]);
    }
    let b_dir = tempfile::tempdir().expect("tempdir");
    // What the other-model liar really runs under SmolLM2's name: Gemma 3, or (as the
    // quantization liar) a cruder quantization of SmolLM2 itself.
    let other = match lie {
        Some("other-model") => Some(crate::harness::model_file()),
        Some("crude-quant") => Some(crate::harness::crude_model_file()),
        _ => None,
    };
    if let Some(other) = other {
        let models = b_dir.path().join("models");
        std::fs::create_dir_all(&models).expect("mkdir");
        std::os::unix::fs::symlink(other, models.join("other.gguf")).expect("link");
    }
    let b = chat_node(b_dir, &extra).await;
    let b_addr = b.tcp_addr().await;
    let a = chat_node(a_dir, &["--bootstrap-peer", &b_addr]).await;
    wait_for_catalogs(&a, &[&b]).await;
    (a, b)
}

/// Waits until `a` has read the catalog of each of `peers`.
pub async fn wait_for_catalogs(a: &Node, peers: &[&Node]) {
    let ids: Vec<String> = peers.iter().map(|p| p.peer_id()).collect();
    a.wait_for("the peers' catalogs", |s| {
        ids.iter().all(|id| {
            s["peers"].as_array().is_some_and(|peers| {
                peers.iter().any(|p| {
                    p["peer_id"] == id.as_str()
                        && p["models"].as_array().is_some_and(|m| !m.is_empty())
                })
            })
        })
    })
    .await;
}

pub fn question(options: Value, system: Option<&str>) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": "Name three colours of the rainbow."}));
    json!({"model": "smollm2", "messages": messages, "stream": false, "options": options})
}

/// A's answer through B, with the check `verify` asks for.
pub async fn ask(
    a: &Node,
    body: Value,
    verify: &str,
    accept: bool,
) -> (u16, Option<String>, Value) {
    let mut request = a.post("/api/chat", body).header("X-Lucid-Route", "peer");
    request = request.header("X-Lucid-Verify", verify);
    if accept {
        request = request.header("X-Lucid-Accept-Unverified", "true");
    }
    let response = request.send().await.expect("chat");
    let status = response.status().as_u16();
    let check = response
        .headers()
        .get("x-lucid-spot-check")
        .map(|v| v.to_str().expect("ascii").to_string());
    (status, check, response.json().await.expect("json"))
}

pub const GREEDY: fn() -> Value = || json!({"temperature": 0, "num_predict": 40});
const SAMPLED: fn() -> Value = || json!({"seed": 7, "num_predict": 40});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_answers_pass_greedy_sampled_and_full() {
    let (a, b) = pair(None).await;
    for (options, verify) in
        [(GREEDY(), "spot"), (SAMPLED(), "spot"), (GREEDY(), "full"), (SAMPLED(), "full")]
    {
        let (status, check, answer) = ask(&a, question(options, None), verify, false).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["routed_via"], b.peer_id(), "served by B: {answer}");
        assert_eq!(check.as_deref(), Some("passed"), "{answer}");
        assert_eq!(answer["spot_check"]["result"], "passed", "{answer}");
        assert_eq!(answer["receipt_verified"], true);
        assert!(answer["spot_check"]["positions"].as_u64().expect("count") > 0);
        // The saved answer, check and all, still verifies offline.
        let saved = lucidd::receipt_check::check(&answer.to_string()).expect("verifies offline");
        assert_eq!(saved.worker.to_string(), b.peer_id());
    }
    // Each check is on disk beside the receipts, naming the answer it checked.
    let log = std::fs::read_to_string(a.dir.path().join("receipts").join("checks.log"))
        .expect("the check log");
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(records.len(), 4, "{log}");
    for record in &records {
        assert_eq!(record["result"], "passed");
        assert_eq!(record["peer"], b.peer_id());
        assert_eq!(record["manifest_hash"].as_str().map(str::len), Some(64));
    }

    // The receipt names the file B ran; a request may pin it, and a pin nobody serves is a
    // clear 404.
    let cid =
        phase_protocol::ContentId::for_bytes(&std::fs::read(chat_model_file()).expect("read"));
    let (_, _, answer) = ask(&a, question(GREEDY(), None), "off", false).await;
    assert_eq!(answer["receipt"]["body"]["served"], cid.to_string(), "{answer}");
    assert_eq!(answer["receipt"]["version"], 2);
    let pinned = a
        .post("/api/chat", question(GREEDY(), None))
        .header("X-Lucid-Route", "peer")
        .header("X-Lucid-Model-Cid", cid.to_string())
        .send()
        .await
        .expect("chat");
    assert_eq!(pinned.status(), 200);
    let other = phase_protocol::ContentId::for_bytes(b"another model");
    let refused = a
        .post("/api/chat", question(GREEDY(), None))
        .header("X-Lucid-Route", "peer")
        .header("X-Lucid-Model-Cid", other.to_string())
        .send()
        .await
        .expect("chat");
    assert_eq!(refused.status(), 404);
    let text = refused.text().await.expect("body");
    assert!(text.contains(&other.to_string()), "{text}");
    let bad = a
        .post("/api/chat", question(GREEDY(), None))
        .header("X-Lucid-Model-Cid", "sha256:nope")
        .send()
        .await
        .expect("chat");
    assert_eq!(bad.status(), 400);

    // Off: the answer says it was not checked.
    let (status, check, answer) = ask(&a, question(GREEDY(), None), "off", false).await;
    assert_eq!((status, check.as_deref()), (200, Some("not-checked")), "{answer}");
    // A local answer is not spot-checked at all.
    let local = a
        .post("/api/chat", question(GREEDY(), None))
        .header("X-Lucid-Route", "local")
        .send()
        .await
        .expect("chat");
    assert!(local.headers().get("x-lucid-spot-check").is_none());
    let local: Value = local.json().await.expect("json");
    assert_eq!(local["routed_via"], "local");
    assert!(local.get("spot_check").is_none(), "{local}");
}

/// Each lie is caught on a greedy and on a sampled request, checked in full: refused with a
/// 502 that says why (greedy, here), or delivered marked unverified when the client accepts
/// that (sampled). Each with a fresh requester: a caught liar is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lie_is_caught_and_refused_or_marked() {
    let system = "Answer in French only.";
    for lie in ["made-up-text", "truncate", "hotter", "drop-system", "other-model"] {
        let (a, _b) = pair(Some(lie)).await;
        let body = question(GREEDY(), Some(system));
        let (status, check, answer) = ask(&a, body, "full", false).await;
        assert_eq!(status, 502, "{lie}: {answer}");
        assert_eq!(check.as_deref(), Some("failed"), "the refusal says why");
        let error = answer["error"].as_str().expect("error");
        assert!(error.contains("spot check"), "{lie}: {error}");

        let (a, b) = pair(Some(lie)).await;
        let body = question(SAMPLED(), Some(system));
        let (status, check, answer) = ask(&a, body, "full", true).await;
        assert_eq!(status, 200, "{lie}: {answer}");
        if lie == "hotter" {
            // Sampling hotter inside the same nucleus shows only statistically: one answer
            // of 40 tokens lowers the z-score (about -3 here) without crossing the limit;
            // the peer's standing sums it over its answers.
            eprintln!("{lie} sampled: {}", answer["spot_check"]);
            continue;
        }
        assert_eq!(check.as_deref(), Some("failed"), "{lie}: {answer}");
        assert_eq!(answer["spot_check"]["result"], "failed");
        assert_eq!(answer["receipt_verified"], false, "a caught lie is not verified");
        assert_eq!(answer["routed_via"], b.peer_id());
    }
}

/// A cruder quantization of the same model (Q2_K from Q4_1) under its name passes every receipt
/// check; the spot checks see it within ten answers of 128 tokens: greedy answers fail a check,
/// and sampled ones lower the peer's summed statistic until it counts as caught and the peer
/// falls under the reputation floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cruder_quantization_is_caught_within_ten_answers() {
    let questions = [
        "Why do birds sing?",
        "Explain what a noun is.",
        "Tell me a fun fact about the moon.",
        "Give me a tip for sleeping well.",
        "Write a haiku about rain.",
        "Describe a cat in one sentence.",
        "What is water made of?",
        "Give one reason to read books.",
        "What do bees make?",
        "Write a short greeting for a friend.",
    ];
    let greedy = || json!({"temperature": 0, "num_predict": 128});
    let sampled = || json!({"seed": 11, "num_predict": 128});
    for (kind, options) in [("greedy", greedy as fn() -> Value), ("sampled", sampled)] {
        let (a, _b) = pair(Some("crude-quant")).await;
        let mut caught = None;
        for (n, text) in questions.iter().enumerate() {
            let mut body = question(options(), None);
            body["messages"][0]["content"] = json!(text);
            let (status, check, answer) = ask(&a, body, "spot", true).await;
            if status == 502 {
                // Refused before asking: the peer's standing fell under the floor.
                let error = answer["error"].as_str().expect("error");
                assert!(error.contains("reputation floor"), "{kind}: {error}");
                caught = Some(n);
                break;
            }
            assert_eq!(status, 200, "{kind}: {answer}");
            eprintln!("crude-quant {kind} answer {}: {}", n + 1, answer["spot_check"]);
            if check.as_deref() == Some("failed") {
                caught = Some(n + 1);
                break;
            }
            assert_eq!(check.as_deref(), Some("passed"), "{kind}: {answer}");
        }
        let caught = caught.unwrap_or_else(|| panic!("{kind}: not caught in ten answers"));
        eprintln!("crude-quant {kind}: caught after {caught} answers");
    }
}

/// A streamed lie reaches the client chunk by chunk before it can be checked: its last line is
/// an error with the failed check, never `done: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_lie_ends_with_the_failed_check() {
    let (a, _b) = pair(Some("made-up-text")).await;
    let mut body = question(GREEDY(), None);
    body["stream"] = json!(true);
    let response = a
        .post("/api/chat", body)
        .header("X-Lucid-Route", "peer")
        .header("X-Lucid-Verify", "spot")
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200, "a stream has started before the check");
    let lines = crate::harness::ndjson(&response.text().await.expect("body"));
    let last = lines.last().expect("a last line");
    assert!(last["error"].as_str().expect("error").contains("spot check"), "{last}");
    assert_eq!(last["spot_check"]["result"], "failed", "{last}");
    assert!(lines.iter().all(|l| l["done"] != true), "never done: {lines:?}");
}

/// A caught liar loses its standing: the next request goes to an honest peer that joined
/// since, and with only the liar left, requests are refused naming it instead of trusting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_liar_is_routed_around() {
    let (a, liar) = pair(Some("made-up-text")).await;
    let (status, check, answer) = ask(&a, question(GREEDY(), None), "spot", false).await;
    assert_eq!((status, check.as_deref()), (502, Some("failed")), "{answer}");
    let liar_id = liar.peer_id();
    let standing = a.status().await;
    let listed = standing["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer_id"] == liar_id.as_str())
        .expect("the liar is listed")
        .clone();
    assert_eq!(listed["reputation"]["usable"], false, "{listed}");
    // The operator sees it too.
    let shown = std::process::Command::new(crate::nodes::LUCIDD)
        .args(["peers", "--host", a.http.trim_start_matches("http://")])
        .output()
        .expect("lucidd peers");
    let shown = String::from_utf8_lossy(&shown.stdout);
    let line = shown.lines().find(|l| l.contains(&liar_id)).expect("the liar is listed");
    assert!(line.contains("no: floor"), "{shown}");

    let (status, _, answer) = ask(&a, question(GREEDY(), None), "spot", false).await;
    assert_eq!(status, 502, "{answer}");
    let error = answer["error"].as_str().expect("error");
    assert!(error.contains("reputation floor") && error.contains(&liar_id), "{error}");

    // An honest peer joins A; A's requests go there.
    let a_id = a.peer_id();
    let a_addr = a.tcp_addr().await;
    let honest = chat_node(
        tempfile::tempdir().expect("tempdir"),
        &["--allow-signer", &a_id, "--bootstrap-peer", &a_addr],
    )
    .await;
    let honest_id = honest.peer_id();
    wait_for_catalogs(&a, &[&honest]).await;
    for _ in 0..3 {
        let (status, check, answer) = ask(&a, question(GREEDY(), None), "spot", false).await;
        assert_eq!((status, check.as_deref()), (200, Some("passed")), "{answer}");
        assert_eq!(answer["routed_via"], honest_id.as_str());
    }
    assert!(a.dir.path().join("reputation.json").exists(), "the standing is kept on disk");
}

/// Characters whose bytes span tokens ("ê" is two tokens for SmolLM2) arrive from llama-server
/// with the id of only the last of them; the committed ids are completed, so an honest French
/// answer passes a check of every position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_characters_across_tokens_passes_a_full_check() {
    let (a, _b) = pair(None).await;
    let body = json!({
        "model": "smollm2",
        "stream": false,
        "options": {"temperature": 0, "num_predict": 24},
        "messages": [
            {"role": "system", "content": "Answer in French only."},
            {"role": "user", "content": "Say: Cela peut être vrai."},
        ],
    });
    let (status, check, answer) = ask(&a, body, "full", false).await;
    assert_eq!(status, 200, "{answer}");
    let text = answer["message"]["content"].as_str().expect("content");
    assert!(!text.is_ascii(), "the answer has accented characters: {text}");
    assert_eq!(check.as_deref(), Some("passed"), "{answer}");
    // The piece that completed "ê" carries both its tokens' ids (llama-server sent one).
    let chunks = answer["receipt_chunks"].as_array().expect("chunks");
    assert!(
        chunks.iter().any(|e| e["token_ids"].as_array().is_some_and(|ids| ids.len() >= 2)),
        "{chunks:?}"
    );
}
