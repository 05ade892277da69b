//! A verified job ends with the verdict its receipt earns, and says so to subscribers.

use phase_identity::NodeIdentity;
use phase_manifest::Sha256Hash;
use phase_node::{NodeEvent, NodeEvents, Route, Step, Verdict, VerifiedJob};
use phase_protocol::{Completion, Metrics, OutputChunk, job_channel};
use phase_receipt::BindStep;

/// A job that says `words` and finishes, signed by `worker` for `job`.
fn job(worker: &NodeIdentity, job: Sha256Hash, words: &[&str]) -> phase_protocol::Job {
    let (mut emitter, handle) = job_channel(worker.clone(), job);
    let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    tokio::spawn(async move {
        for word in words {
            emitter.output(OutputChunk::text(&word)).await.expect("send");
        }
        emitter.finish(Completion::Finished, Metrics::default());
    });
    handle
}

async fn run(mut verified: VerifiedJob) -> (Vec<String>, Verdict) {
    let mut text = Vec::new();
    loop {
        match verified.next().await.expect("a step") {
            Step::Output(chunk) => text.push(chunk.text_content().expect("text").to_string()),
            Step::Annotation(_) => {}
            Step::Done(finished) => return (text, finished.verdict),
            Step::Broken(reason) => panic!("broken: {reason}"),
        }
    }
}

#[tokio::test]
async fn each_verdict_names_what_the_receipt_proves() {
    let (worker, other) = (NodeIdentity::generate(), NodeIdentity::generate());
    let hash = Sha256Hash([7; 32]);
    let events = NodeEvents::new();
    let mut seen = events.subscribe();

    let honest =
        VerifiedJob::local(job(&worker, hash, &["a", "b"]), hash, worker.peer_id(), &events);
    assert_eq!(honest.route(), Route::Local);
    let (text, verdict) = run(honest).await;
    assert_eq!((text.concat(), verdict), ("ab".to_string(), Verdict::Verified));

    // Signed by someone else than the worker it claims to come from.
    let impostor = VerifiedJob::local(job(&other, hash, &["a"]), hash, worker.peer_id(), &events);
    let (_, verdict) = run(impostor).await;
    assert!(matches!(verdict, Verdict::Failed { step: BindStep::WorkerIsPeer, .. }), "{verdict:?}");

    // A receipt for another job.
    let elsewhere = job(&worker, Sha256Hash([8; 32]), &["a"]);
    let (_, verdict) = run(VerifiedJob::local(elsewhere, hash, worker.peer_id(), &events)).await;
    assert!(matches!(verdict, Verdict::Failed { step: BindStep::SameJob, .. }), "{verdict:?}");

    // Subscribers saw each job start and end with the same verdicts.
    let mut finished = Vec::new();
    while let Ok(event) = seen.try_recv() {
        if let NodeEvent::JobFinished { verdict, completion, .. } = event {
            assert_eq!(completion, Some(Completion::Finished));
            finished.push(match verdict {
                Verdict::Verified => None,
                Verdict::Failed { step, .. } => Some(step),
                Verdict::Broken { .. } => panic!("no job broke"),
            });
        }
    }
    assert_eq!(finished, [None, Some(BindStep::WorkerIsPeer), Some(BindStep::SameJob)]);
}
