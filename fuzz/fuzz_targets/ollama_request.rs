//! Request bodies of the Ollama and OpenAI APIs, parsed as the handlers parse them, then the
//! checks that need no model: names, keep_alive, format, images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucidd::api::body::parse_json;
use lucidd::api::ollama::requests::{ChatRequest, CreateRequest, EmbedRequest, GenerateRequest};
use lucidd::api::ollama::validate;
use lucidd::api::openai::CompletionRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_json::<ChatRequest>(data) {
        let _ = validate::model_name(&req.model);
        let _ = validate::keep_alive(req.keep_alive.as_ref());
        let _ = validate::format(req.format.as_ref());
    }
    if let Ok(req) = parse_json::<GenerateRequest>(data) {
        let _ = validate::model_name(&req.model);
        let _ = validate::images(req.images.as_ref());
    }
    let _ = parse_json::<EmbedRequest>(data);
    let _ = parse_json::<CreateRequest>(data);
    let _ = parse_json::<CompletionRequest>(data);
});
