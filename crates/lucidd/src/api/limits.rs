//! How many of each thing one request may hold. The body size bounds bytes; these bound counts,
//! so the memory and CPU a request costs are a bounded multiple of its size whatever its shape
//! (an embed request of 100 000 one-letter inputs used to cost 2 GB; 80 000 stop strings kept
//! the async threads busy for a minute). Each limit is at or above what the APIs' own clients
//! send: OpenAI allows 2048 embedding inputs, 4 stop sequences and 128 tools.

use super::error::ApiError;

/// Inputs of one embedding request (`/api/embed`, `/v1/embeddings`).
pub const MAX_EMBED_INPUTS: usize = 2048;
/// Messages of one chat.
pub const MAX_MESSAGES: usize = 4096;
/// Stop strings of one request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Tools offered in one request.
pub const MAX_TOOLS: usize = 128;
/// Images in one message (or one generate request).
pub const MAX_IMAGES: usize = 16;
/// Token ids of one `/api/generate` `context`: the largest context any model gets
/// ([`MAX_NUM_CTX`](crate::workers::llama_cpp::MAX_NUM_CTX)); the worker then checks it against
/// the context the request actually runs with.
pub const MAX_CONTEXT_TOKENS: usize = crate::workers::llama_cpp::MAX_NUM_CTX as usize;

/// Refuses `count` of `what` above `max`, saying what to do instead.
pub fn at_most(what: &str, count: usize, max: usize) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::bad_request(format!(
            "too many {what}: {count}, at most {max} per request; split it into several requests"
        )));
    }
    Ok(())
}
