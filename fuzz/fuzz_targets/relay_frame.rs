//! Bytes arriving on a job relay stream: length-prefixed frames, each decoded as a server frame
//! (what a requester reads) with the relay's size limit.
#![no_main]

use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use phase_net::frame;
use phase_net::wire::ServerFrame;

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    for _ in 0..64 {
        let result: Result<ServerFrame, _> = futures::executor::block_on(frame::read_value(&mut cursor, 1 << 16));
        match result {
            Ok(frame) => {
                // A frame that decodes must encode again.
                let mut buf = Vec::new();
                frame::append_value(&mut buf, &frame, 1 << 20).expect("re-encode");
            }
            Err(frame::FrameError::Closed) => return,
            Err(_) => return,
        }
    }
});
