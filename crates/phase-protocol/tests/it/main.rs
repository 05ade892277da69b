//! Integration tests of the job protocol, and the cross-crate test vectors in `spec/vectors/`.

mod jobs;
mod vectors;
