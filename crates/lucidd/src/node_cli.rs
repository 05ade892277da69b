//! Commands that ask a running node (`OLLAMA_HOST`) over its HTTP API: `lucidd verify-proof`,
//! `lucidd peers`, `lucidd pull` and `lucidd publish`.

use anyhow::{Context, bail};
use serde_json::Value;

/// The node's address for `path`, and a runtime to ask it on.
fn node(host: &str, path: &str) -> anyhow::Result<(String, tokio::runtime::Runtime)> {
    let addr = crate::config::parse_listen_addr(host).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok((format!("http://{addr}{path}"), runtime))
}

fn unreachable(url: &str) -> String {
    format!("reaching lucidd at {url} (is it running? set OLLAMA_HOST)")
}

/// Sends a request to the node at `host` and reads its JSON answer.
fn ask(host: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<(u16, Value)> {
    let (url, runtime) = node(host, path)?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let request = match body {
            Some(body) => client.post(&url).header("content-type", "application/json").body(body),
            None => client.get(&url),
        };
        let response = request.send().await.with_context(|| unreachable(&url))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.context("reading the answer")?;
        Ok((status, answer))
    })
}

/// `lucidd verify-proof FILE`: posts the proof to the node and prints what its model found.
pub fn verify_proof(file: &std::path::Path, host: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (status, answer) = ask(host, "/api/phase/proofs/verify", Some(bytes))?;
    if let Some(error) = answer["error"].as_str() {
        bail!("{error}");
    }
    if !(200..300).contains(&status) {
        bail!("the node answered {status}: {answer}");
    }
    let accused = answer["accused"].as_str().unwrap_or("?");
    if answer["holds"] == true {
        println!(
            "the proof holds: {accused}'s signed answer could not have come from the model ({})",
            answer["reason"].as_str().unwrap_or_default()
        );
        Ok(())
    } else {
        bail!("the proof does not hold: this node's model finds {accused}'s answer consistent")
    }
}

/// `lucidd peers`: the node's peers with their latency, standing and models.
pub fn peers(host: &str) -> anyhow::Result<()> {
    let (_, status) = ask(host, "/api/phase/network", None)?;
    if status["enabled"] == false {
        println!("this node runs without p2p (--no-p2p)");
        return Ok(());
    }
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    println!("{}", table(&peers));
    Ok(())
}

/// `lucidd pull NAME`: the node pulls the model (from peers or its registry) and this shows the
/// progress: a bar per blob with bytes, rate and time left (and per peer that sends it), and
/// each step as it happens.
pub fn pull(name: &str, insecure: bool, host: &str) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (url, runtime) = node(host, "/api/pull")?;
    runtime.block_on(async {
        let body = serde_json::json!({"model": name, "insecure": insecure, "stream": true});
        let response = reqwest::Client::new()
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| unreachable(&url))?;
        if !response.status().is_success() {
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or_default();
            bail!(
                "{}",
                answer["error"]
                    .as_str()
                    .map_or_else(|| format!("the node answered {status}"), str::to_string)
            );
        }
        let mut bars = PullBars::default();
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while let Some(bytes) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&bytes.context("reading the progress")?));
            while let Some(end) = text.find('\n') {
                let line: Value = serde_json::from_str(&text[..end]).unwrap_or_default();
                text.drain(..=end);
                if let Some(error) = line["error"].as_str() {
                    bars.abandon();
                    bail!("{error}");
                }
                bars.show(&line);
            }
        }
        Ok(())
    })
}

/// The bars of `lucidd pull`: one per blob (bytes, rate, time left), and under a blob pulled
/// from peers one per peer with what it has sent.
#[derive(Default)]
struct PullBars {
    bars: indicatif::MultiProgress,
    layers: std::collections::HashMap<String, indicatif::ProgressBar>,
    sources: std::collections::HashMap<(String, String), indicatif::ProgressBar>,
}

impl PullBars {
    fn style(template: &str) -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    /// Shows one progress line of `/api/pull`.
    fn show(&mut self, line: &Value) {
        use indicatif::ProgressBar;
        let status = line["status"].as_str().unwrap_or_default();
        let (Some(digest), Some(total)) = (line["digest"].as_str(), line["total"].as_u64()) else {
            // A step after the bytes: what each peer sent is final.
            let done = self.layers.values().filter(|b| b.position() >= b.length().unwrap_or(0));
            done.chain(self.sources.values()).for_each(ProgressBar::finish);
            let _ = self.bars.println(status);
            if self.bars.is_hidden() {
                println!("{status}");
            }
            return;
        };
        let layer = self.layers.entry(digest.to_string()).or_insert_with(|| {
            let style =
                Self::style("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left");
            let bar = self.bars.add(ProgressBar::new(total).with_style(style));
            bar.set_message(status.to_string());
            bar
        });
        layer.set_position(line["completed"].as_u64().unwrap_or(0));
        let layer = layer.clone();
        for (peer, sent) in line["sources"].as_object().into_iter().flatten() {
            let key = (digest.to_string(), peer.clone());
            let bar = self.sources.entry(key).or_insert_with(|| {
                let style = Self::style("  from {msg} [{bar:20}] {bytes} {bytes_per_sec}");
                let bar = self.bars.insert_after(&layer, ProgressBar::new(total).with_style(style));
                // The end of a PeerId tells peers apart; all of them start alike.
                let tail: String =
                    peer.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
                bar.set_message(format!("…{tail}"));
                bar
            });
            bar.set_position(sent.as_u64().unwrap_or(0));
        }
    }

    fn all(&self) -> impl Iterator<Item = &indicatif::ProgressBar> {
        self.layers.values().chain(self.sources.values())
    }

    fn abandon(&self) {
        self.all().for_each(indicatif::ProgressBar::abandon);
    }
}

/// `lucidd publish NAME`: the node signs a name record for its model and stores it in the DHT.
pub fn publish(name: &str, host: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({"model": name}))?;
    let (status, answer) = ask(host, "/api/phase/publish", Some(body))?;
    if let Some(error) = answer["error"].as_str() {
        bail!("{error}");
    }
    if !(200..300).contains(&status) {
        bail!("the node answered {status}: {answer}");
    }
    let record = &answer["record"];
    let file = &record["file"];
    println!(
        "published {}: {} ({} bytes in pieces of {} bytes, piece list {}), signed by {}",
        record["name"].as_str().unwrap_or("?"),
        file["cid"].as_str().unwrap_or("?"),
        file["size"],
        file["piece_size"],
        file["pieces"].as_str().unwrap_or("?"),
        record["publisher"].as_str().unwrap_or("?"),
    );
    Ok(())
}

/// The peers as a table a person reads.
fn table(peers: &[Value]) -> String {
    let mut out = vec![format!(
        "{:<52}  {:>7}  {:>9}  {:>8}  {:>9}  {}",
        "PEER", "VIA", "RTT", "STANDING", "USED", "MODELS"
    )];
    for peer in peers {
        let rtt =
            peer["rtt_ms"].as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
        let standing = &peer["reputation"];
        let score = standing["score"].as_f64().map_or_else(|| "-".into(), |s| format!("{s:.2}"));
        let used = match (peer["connected"].as_bool(), standing["usable"].as_bool()) {
            (_, Some(false)) => "no: floor",
            (Some(false), _) => "offline",
            _ => "yes",
        };
        let models: Vec<&str> = peer["models"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push(format!(
            "{:<52}  {:>7}  {:>9}  {:>8}  {:>9}  {}",
            peer["peer_id"].as_str().unwrap_or("?"),
            peer["connection"].as_str().unwrap_or("-"),
            rtt,
            score,
            used,
            models.join(", ")
        ));
    }
    if peers.is_empty() {
        out.push("(no peers yet)".into());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::table;
    use serde_json::json;

    #[test]
    fn the_table_shows_standing_and_why_a_peer_is_not_used() {
        let shown = table(&[
            json!({"peer_id": "12D3KooWA", "connected": true, "rtt_ms": 0.42,
                   "reputation": {"score": 0.5, "usable": true}, "models": ["smollm2:latest"]}),
            json!({"peer_id": "12D3KooWB", "connected": true, "rtt_ms": null,
                   "reputation": {"score": 0.02, "usable": false}, "models": []}),
        ]);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3, "{shown}");
        assert!(
            lines[1].contains("0.4 ms")
                && lines[1].contains("0.50")
                && lines[1].contains("smollm2")
        );
        assert!(lines[2].contains("0.02") && lines[2].contains("no: floor"), "{shown}");
    }
}
